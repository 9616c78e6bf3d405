//! Crawl rules: which links a page's rule follows and which items it extracts, compiled once
//! (selectors parsed, regexes built, rule references resolved) so a mistake is an error at
//! startup naming the task and rule, never a surprise mid-crawl.

use std::collections::HashMap;

use regex::Regex;
use scraper::{ElementRef, Html, Selector};
use url::Url;

use crate::model::task::{FieldConfig, FollowConfig, ItemConfig, RuleConfig, TaskConfig};

/// A rule that could not be compiled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    /// Field path inside the task, e.g. `Rules[1].Follow[0].Selector`.
    pub field: String,
    /// What is wrong, naming the task and the rule.
    pub message: String,
}

/// Where a followed link's URL comes from when a rule does not say.
const DEFAULT_LINK_ATTR: &str = "href";

/// A compiled `Follow` entry.
#[derive(Debug)]
struct Follow {
    selector: Selector,
    attr: String,
    /// The rule the linked pages use, by name (kept by name in the frontier).
    rule: Option<String>,
}

/// A compiled field.
#[derive(Debug)]
struct Field {
    name: String,
    selector: Option<Selector>,
    attr: Option<String>,
    regex: Option<Regex>,
}

/// A compiled item kind.
#[derive(Debug)]
struct ItemSpec {
    name: String,
    scope: Option<Selector>,
    fields: Vec<Field>,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// The rule's name (`#<index>` for an unnamed one); tests read it to check which rule a page
    /// gets.
    #[cfg_attr(not(test), allow(dead_code))]
    name: String,
    depth: Option<u32>,
    follow: Vec<Follow>,
    items: Vec<ItemSpec>,
}

#[cfg(test)]
impl Rule {
    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Every rule of a task.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    by_name: HashMap<String, usize>,
    /// No rules configured: follow every link, extract nothing.
    follow_all: Selector,
}

/// One item found on a page: its kind and fields in configured order (`None`: not found).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// Item kind (`Items.Name`).
    pub name: String,
    /// Field values.
    pub fields: Vec<(String, Option<String>)>,
}

/// What a page yields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageOutput {
    /// Absolute http(s) links, with the rule named for them.
    pub links: Vec<(Url, Option<String>)>,
    /// Extracted items.
    pub items: Vec<Extracted>,
}

fn parse_selector(css: &str, field: &str, task: &str, rule: &str) -> Result<Selector, RuleError> {
    if css.trim().is_empty() {
        return Err(RuleError {
            field: field.to_string(),
            message: format!("task {task:?} rule {rule:?}: empty CSS selector"),
        });
    }
    Selector::parse(css).map_err(|e| RuleError {
        field: field.to_string(),
        message: format!(
            "task {task:?} rule {rule:?}: bad CSS selector {css:?}: {}",
            selector_problem(&e)
        ),
    })
}

/// What is wrong with a selector, in words: scraper's own text for the parser's detailed
/// errors is "Unexpected error occurred. Please report this to the developer" and a debug dump.
fn selector_problem(e: &scraper::error::SelectorErrorKind) -> String {
    use scraper::error::SelectorErrorKind as K;
    let K::UnexpectedSelectorParseError(kind) = e else {
        return match e {
            K::UnexpectedToken => "unexpected character or token".into(),
            K::EndOfLine => {
                "it ends too early (a class, attribute or bracket is unfinished)".into()
            }
            other => other.to_string().to_lowercase(),
        };
    };
    let name = format!("{kind:?}");
    let what = match name.as_str() {
        "ClassNeedsIdent" => "'.' must be followed by a class name",
        "EmptySelector" => "a selector (or one of its comma-separated parts) is empty",
        "DanglingCombinator" => "a combinator (>, +, ~) has nothing after it",
        "NoQualifiedNameInAttributeSelector" | "InvalidQualNameInAttr" => {
            "an attribute selector needs an attribute name, as in [href]"
        }
        "ExpectedBarInAttr" | "UnexpectedTokenInAttributeSelector" | "BadValueInAttr" => {
            "bad attribute selector: use [name], [name=value] or [name=\"value\"]"
        }
        "UnsupportedPseudoClassOrElement" => "unsupported pseudo-class or pseudo-element",
        "NoIdentForPseudo" => "':' must be followed by a pseudo-class name",
        "ExpectedNamespace" | "ExplicitNamespaceUnexpectedToken" => "namespaces are not supported",
        _ => return format!("not a valid selector ({name})"),
    };
    what.to_string()
}

impl Rules {
    /// Compile the rules of `task`.
    pub fn compile(task: &TaskConfig) -> Result<Rules, RuleError> {
        let t = task.name.as_str();
        let mut by_name = HashMap::new();
        for (i, r) in task.rules.iter().enumerate() {
            if let Some(n) = &r.name {
                let field = format!("Rules[{i}].Name");
                if n.trim().is_empty() {
                    return Err(RuleError {
                        field,
                        message: format!("task {t:?}: rule name must not be empty"),
                    });
                }
                if by_name.insert(n.clone(), i).is_some() {
                    return Err(RuleError {
                        field,
                        message: format!("task {t:?}: duplicate rule name {n:?}"),
                    });
                }
            }
        }
        let mut rules = Vec::with_capacity(task.rules.len());
        for (i, r) in task.rules.iter().enumerate() {
            rules.push(Self::compile_rule(t, i, r, &by_name)?);
        }
        let follow_all = Selector::parse("a[href]").map_err(|e| RuleError {
            field: "Rules".into(),
            message: format!("built-in selector: {e}"),
        })?;
        Ok(Rules {
            rules,
            by_name,
            follow_all,
        })
    }

    fn compile_rule(
        task: &str,
        i: usize,
        r: &RuleConfig,
        names: &HashMap<String, usize>,
    ) -> Result<Rule, RuleError> {
        let name = r.name.clone().unwrap_or_else(|| format!("#{i}"));
        let at = |rest: String| format!("Rules[{i}].{rest}");
        let mut follow = Vec::new();
        for (j, f) in r.follow.iter().enumerate() {
            let FollowConfig {
                selector,
                attr,
                rule,
            } = f;
            let selector =
                parse_selector(selector, &at(format!("Follow[{j}].Selector")), task, &name)?;
            if let Some(target) = rule {
                if !names.contains_key(target) {
                    return Err(RuleError {
                        field: at(format!("Follow[{j}].Rule")),
                        message: format!(
                            "task {task:?} rule {name:?}: no rule named {target:?} (known: {:?})",
                            {
                                let mut k: Vec<&String> = names.keys().collect();
                                k.sort();
                                k
                            }
                        ),
                    });
                }
            }
            let attr = match attr.as_deref().map(str::trim) {
                Some("") => {
                    return Err(RuleError {
                        field: at(format!("Follow[{j}].Attr")),
                        message: format!("task {task:?} rule {name:?}: empty attribute name"),
                    })
                }
                Some(a) => a.to_string(),
                None => DEFAULT_LINK_ATTR.to_string(),
            };
            follow.push(Follow {
                selector,
                attr,
                rule: rule.clone(),
            });
        }
        let mut items = Vec::new();
        for (j, it) in r.items.iter().enumerate() {
            let ItemConfig {
                name: item_name,
                selector,
                fields,
            } = it;
            if item_name.trim().is_empty() {
                return Err(RuleError {
                    field: at(format!("Items[{j}].Name")),
                    message: format!("task {task:?} rule {name:?}: item name must not be empty"),
                });
            }
            let scope = selector
                .as_deref()
                .map(|s| parse_selector(s, &at(format!("Items[{j}].Selector")), task, &name))
                .transpose()?;
            if fields.is_empty() {
                return Err(RuleError {
                    field: at(format!("Items[{j}].Fields")),
                    message: format!(
                        "task {task:?} rule {name:?}: item {item_name:?} has no fields"
                    ),
                });
            }
            let mut compiled = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (k, f) in fields.iter().enumerate() {
                let FieldConfig {
                    name: fname,
                    selector,
                    attr,
                    regex,
                } = f;
                let fat = |x: &str| at(format!("Items[{j}].Fields[{k}].{x}"));
                if fname.trim().is_empty() {
                    return Err(RuleError {
                        field: fat("Name"),
                        message: format!(
                            "task {task:?} rule {name:?}: field name must not be empty"
                        ),
                    });
                }
                if !seen.insert(fname.as_str()) {
                    return Err(RuleError {
                        field: fat("Name"),
                        message: format!(
                            "task {task:?} rule {name:?}: duplicate field {fname:?} in item {item_name:?}"
                        ),
                    });
                }
                let selector = selector
                    .as_deref()
                    .map(|s| parse_selector(s, &fat("Selector"), task, &name))
                    .transpose()?;
                let regex = regex
                    .as_deref()
                    .map(|re| {
                        Regex::new(re).map_err(|e| RuleError {
                            field: fat("Regex"),
                            message: format!(
                                "task {task:?} rule {name:?}: bad regex {re:?}: {}",
                                e.to_string().lines().last().unwrap_or_default().trim()
                            ),
                        })
                    })
                    .transpose()?;
                let attr = match attr.as_deref().map(str::trim) {
                    Some("") => {
                        return Err(RuleError {
                            field: fat("Attr"),
                            message: format!("task {task:?} rule {name:?}: empty attribute name"),
                        })
                    }
                    a => a.map(str::to_string),
                };
                compiled.push(Field {
                    name: fname.clone(),
                    selector,
                    attr,
                    regex,
                });
            }
            items.push(ItemSpec {
                name: item_name.clone(),
                scope,
                fields: compiled,
            });
        }
        Ok(Rule {
            name,
            depth: r.depth,
            follow,
            items,
        })
    }

    /// The rule for a page: the one its link named, else the one for its depth, else the first
    /// rule without a depth. `None`: no rule applies (the page yields nothing).
    pub fn for_page(&self, depth: u32, named: Option<&str>) -> Option<&Rule> {
        if let Some(i) = named.and_then(|n| self.by_name.get(n)) {
            return self.rules.get(*i);
        }
        self.rules
            .iter()
            .find(|r| r.depth == Some(depth))
            .or_else(|| self.rules.iter().find(|r| r.depth.is_none()))
    }

    /// Links and items of an HTML page at `base` (its final URL) at `depth`, linked with rule
    /// `named`. Synchronous: a parsed document cannot cross an await.
    pub fn apply(&self, html: &str, base: &Url, depth: u32, named: Option<&str>) -> PageOutput {
        let doc = Html::parse_document(html);
        let base = document_base(&doc, base);
        let mut out = PageOutput::default();
        if self.rules.is_empty() {
            for el in doc.select(&self.follow_all) {
                if let Some(u) = el.value().attr("href").and_then(|h| link_url(&base, h)) {
                    out.links.push((u, None));
                }
            }
            return out;
        }
        let Some(rule) = self.for_page(depth, named) else {
            return out;
        };
        for f in &rule.follow {
            for el in doc.select(&f.selector) {
                if let Some(u) = el.value().attr(&f.attr).and_then(|h| link_url(&base, h)) {
                    out.links.push((u, f.rule.clone()));
                }
            }
        }
        for spec in &rule.items {
            let roots: Vec<ElementRef<'_>> = match &spec.scope {
                Some(sel) => doc.select(sel).collect(),
                None => vec![doc.root_element()],
            };
            for root in roots {
                let fields: Vec<(String, Option<String>)> = spec
                    .fields
                    .iter()
                    .map(|f| (f.name.clone(), field_value(f, root, &base)))
                    .collect();
                if fields.iter().any(|(_, v)| v.is_some()) {
                    out.items.push(Extracted {
                        name: spec.name.clone(),
                        fields,
                    });
                }
            }
        }
        out
    }
}

/// The page's `<base href>` when it has a usable one, else its URL.
fn document_base(doc: &Html, url: &Url) -> Url {
    let Ok(sel) = Selector::parse("base[href]") else {
        return url.clone();
    };
    doc.select(&sel)
        .next()
        .and_then(|b| b.value().attr("href"))
        .and_then(|h| url.join(h.trim()).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .unwrap_or_else(|| url.clone())
}

/// An absolute http(s) URL for a link value, without its fragment.
fn link_url(base: &Url, raw: &str) -> Option<Url> {
    let raw = raw.trim();
    if raw.is_empty() || raw.starts_with('#') {
        return None;
    }
    let mut u = base.join(raw).ok()?;
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    u.set_fragment(None);
    Some(u)
}

/// Text content with whitespace runs collapsed to one space, trimmed.
fn clean_text(el: ElementRef<'_>) -> String {
    let mut out = String::new();
    for part in el.text() {
        for w in part.split_whitespace() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(w);
        }
    }
    out
}

fn field_value(f: &Field, root: ElementRef<'_>, base: &Url) -> Option<String> {
    let el = match &f.selector {
        Some(sel) => root.select(sel).next()?,
        None => root,
    };
    let raw = match &f.attr {
        Some(a) => {
            let v = el.value().attr(a)?.trim();
            if matches!(a.to_ascii_lowercase().as_str(), "href" | "src") {
                base.join(v)
                    .map_or_else(|_| v.to_string(), |u| u.to_string())
            } else {
                v.to_string()
            }
        }
        None => clean_text(el),
    };
    match &f.regex {
        Some(re) => {
            let caps = re.captures(&raw)?;
            let m = caps.get(1).or_else(|| caps.get(0))?;
            Some(m.as_str().to_string())
        }
        None => Some(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_errors_say_what_is_wrong() {
        for (css, want) in [
            ("a..b", "'.' must be followed by a class name"),
            ("a.", "ends too early"),
            ("div >", "a combinator"),
            ("h1[", "ends too early"),
            ("a:nosuch", "unsupported pseudo-class"),
            ("[=x]", "attribute name"),
            ("a, ", "is empty"),
        ] {
            let e = parse_selector(css, "F", "t", "r").expect_err(css);
            assert!(e.message.contains(want), "{css}: {}", e.message);
            assert!(!e.message.contains("report this"), "{}", e.message);
        }
    }
    use crate::config::Config;

    fn task(toml_text: &str) -> TaskConfig {
        let cfg: Config = toml::from_str(toml_text).expect("toml");
        cfg.tasks.into_iter().next().expect("a task")
    }

    const BOOKS: &str = r#"
[[Tasks]]
Name = "books"
[[Tasks.Rules]]
Name = "list"
Depth = 0
Follow = ["ul.books a", { Selector = "a.next", Rule = "list" }]
[[Tasks.Rules]]
Name = "detail"
Depth = 1
Items = [{ Name = "book", Fields = [
  { Name = "title", Selector = "h1" },
  { Name = "price", Selector = ".price", Regex = '([0-9.]+)' },
  { Name = "cover", Selector = "img", Attr = "src" },
  { Name = "missing", Selector = ".nope" },
]}]
"#;

    #[test]
    fn follows_and_extracts() {
        let rules = Rules::compile(&task(BOOKS)).expect("compile");
        let base = Url::parse("http://h/list/").expect("url");
        let list = r#"<ul class="books"><li><a href="/b/1#x">One</a></li>
            <li><a href="b/2">Two</a></li><li><a href="mailto:a@b">m</a></li></ul>
            <a class="next" href="?page=2">next</a>"#;
        let out = rules.apply(list, &base, 0, None);
        let links: Vec<(String, Option<String>)> = out
            .links
            .iter()
            .map(|(u, r)| (u.to_string(), r.clone()))
            .collect();
        assert_eq!(
            links,
            vec![
                ("http://h/b/1".to_string(), None),
                ("http://h/list/b/2".to_string(), None),
                (
                    "http://h/list/?page=2".to_string(),
                    Some("list".to_string())
                ),
            ]
        );
        assert!(out.items.is_empty());

        let detail = r#"<h1>  The
            Book </h1><p class="price">Price: 39.50 yuan</p><img src="/c.jpg">"#;
        let out = rules.apply(detail, &Url::parse("http://h/b/1").expect("url"), 1, None);
        assert_eq!(
            out.items,
            vec![Extracted {
                name: "book".into(),
                fields: vec![
                    ("title".into(), Some("The Book".into())),
                    ("price".into(), Some("39.50".into())),
                    ("cover".into(), Some("http://h/c.jpg".into())),
                    ("missing".into(), None),
                ],
            }]
        );
        // A page linked as "list" at depth 1 uses the list rule, not the depth rule.
        assert_eq!(
            rules.for_page(1, Some("list")).map(Rule::name),
            Some("list")
        );
        assert_eq!(rules.for_page(2, None).map(Rule::name), None);
    }

    #[test]
    fn no_rules_follow_every_link() {
        let rules = Rules::compile(&task("[[Tasks]]\nName = \"t\"\n")).expect("compile");
        let out = rules.apply(
            r#"<base href="http://other/x/"><a href="y">y</a><a>no href</a>"#,
            &Url::parse("http://h/").expect("url"),
            3,
            None,
        );
        assert_eq!(out.links.len(), 1);
        assert_eq!(out.links[0].0.as_str(), "http://other/x/y");
    }

    #[test]
    fn errors_name_task_rule_and_field() {
        let bad = BOOKS.replace("ul.books a", "ul.books a[");
        let e = Rules::compile(&task(&bad)).expect_err("bad selector");
        assert_eq!(e.field, "Rules[0].Follow[0].Selector");
        assert!(
            e.message
                .starts_with("task \"books\" rule \"list\": bad CSS selector \"ul.books a[\""),
            "{e}"
        );
        let bad = BOOKS.replace("Rule = \"list\"", "Rule = \"lsit\"");
        let e = Rules::compile(&task(&bad)).expect_err("unknown rule");
        assert_eq!(e.field, "Rules[0].Follow[1].Rule");
        assert!(e.message.contains("no rule named \"lsit\""), "{e}");
        let bad = BOOKS.replace("'([0-9.]+)'", "'([0-9.]+'");
        let e = Rules::compile(&task(&bad)).expect_err("bad regex");
        assert_eq!(e.field, "Rules[1].Items[0].Fields[1].Regex");
        assert!(e.message.contains("rule \"detail\""), "{e}");

        // Through the config loader: the file, the task index and the field.
        let bad = BOOKS.replace("Selector = \"h1\"", "Selector = \"h1 >\"");
        let e = Config::parse(&bad, "c.toml").expect_err("bad");
        assert!(
            e.to_string()
                .starts_with("c.toml: Tasks[0].Rules[1].Items[0].Fields[0].Selector: task \"books\" rule \"detail\": bad CSS selector"),
            "{e}"
        );
        // An unknown field in a rule table is named by toml.
        let bad = BOOKS.replace("{ Selector = \"a.next\"", "{ Selectr = \"a.next\"");
        let e = Config::parse(&bad, "c.toml").expect_err("typo");
        assert!(e.to_string().contains("Selectr"), "{e}");
        let bad = BOOKS.replace("{ Name = \"title\"", "{ Nme = \"title\"");
        let e = Config::parse(&bad, "c.toml").expect_err("typo");
        assert!(e.to_string().contains("Nme"), "{e}");
    }
}
