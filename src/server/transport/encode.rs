//! Table-free HPACK encoding (RFC 7541): static-table references and literals "without
//! indexing" only, so the server's decoder table is never used.

use std::sync::OnceLock;

/// One header field without touching the dynamic table: an indexed static entry, or a literal
/// "without indexing" with a static name reference when there is one (RFC 7541 §6.1, §6.2.2).
pub(crate) fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let mut name_index = 0;
    for &i in static_by_name_len()
        .get(name.len())
        .map_or(&[][..], Vec::as_slice)
    {
        let (n, v) = STATIC_TABLE[usize::from(i)];
        if n == name {
            if v == value {
                encode_int(out, usize::from(i) + 1, 7, 0x80);
                return;
            }
            if name_index == 0 {
                name_index = usize::from(i) + 1;
            }
        }
    }
    encode_int(out, name_index, 4, 0x00);
    if name_index == 0 {
        encode_str(out, name);
    }
    encode_str(out, value);
}

/// HPACK integer with an N-bit prefix (RFC 7541 §5.1).
pub(crate) fn encode_int(out: &mut Vec<u8>, mut value: usize, prefix_bits: u8, first: u8) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// HPACK string literal, raw (no Huffman): the server decodes it with a plain copy.
fn encode_str(out: &mut Vec<u8>, s: &[u8]) {
    encode_int(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// Positions in `STATIC_TABLE` by name length, so a lookup compares a handful of names.
fn static_by_name_len() -> &'static [Vec<u8>] {
    static BY_LEN: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BY_LEN.get_or_init(|| {
        let mut by_len = Vec::new();
        for (i, (name, _)) in STATIC_TABLE.iter().enumerate() {
            if by_len.len() <= name.len() {
                by_len.resize(name.len() + 1, Vec::new());
            }
            by_len[name.len()].push(i as u8);
        }
        by_len
    })
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_uses_static_table_only() {
        let mut out = Vec::new();
        encode_field(&mut out, b":method", b"POST");
        assert_eq!(out, [0x83]);
        out.clear();
        encode_field(&mut out, b"content-type", b"ab");
        assert_eq!(out, [0x0f, 31 - 15, 2, b'a', b'b']);
        out.clear();
        encode_field(&mut out, b"te", b"trailers");
        let mut want = vec![0x00, 2, b't', b'e', 8];
        want.extend_from_slice(b"trailers");
        assert_eq!(out, want);
        out.clear();
        encode_int(&mut out, 1337, 5, 0);
        assert_eq!(out, [31, 154, 10]);
    }
}
