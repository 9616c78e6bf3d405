//! A small book site embedded in the binary, which `crawler dev` serves on 127.0.0.1 so that
//! its sample task (`demo_books`) crawls something real with no network: three list pages
//! (`/books/?page=N`) linking to twelve detail pages (`/books/<id>`), a robots.txt that
//! disallows `/private/`, and links to a private page and to another site that the crawl must
//! not follow.

use std::net::SocketAddr;

use axum::extract::{Path, Query};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::task::JoinHandle;

/// Where `crawler dev` serves the site when the port is free (the sample config's URLs).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8078";
/// Books per list page.
pub const PER_PAGE: usize = 4;

/// (title, author, price, rating)
pub const BOOKS: [(&str, &str, &str, &str); 12] = [
    ("红楼梦", "曹雪芹", "59.70", "9.6"),
    ("西游记", "吴承恩", "47.20", "9.1"),
    ("水浒传", "施耐庵", "50.60", "8.9"),
    ("三国演义", "罗贯中", "39.50", "9.3"),
    ("Pride and Prejudice", "Jane Austen", "25.00", "8.9"),
    ("Moby-Dick", "Herman Melville", "31.00", "8.2"),
    ("War and Peace", "Leo Tolstoy", "68.00", "9.2"),
    ("Don Quixote", "Miguel de Cervantes", "45.80", "8.7"),
    ("The Odyssey", "Homer", "29.90", "8.8"),
    ("Hamlet", "William Shakespeare", "18.00", "9.0"),
    ("Les Misérables", "Victor Hugo", "72.00", "9.1"),
    ("Crime and Punishment", "Fyodor Dostoevsky", "36.50", "9.0"),
];

/// Number of list pages.
pub fn pages() -> usize {
    BOOKS.len().div_ceil(PER_PAGE)
}

#[derive(Deserialize)]
struct ListQuery {
    page: Option<usize>,
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title} - Demo Books</title></head>\n\
         <body><header><a href=\"/books/\">Demo Books</a></header>\n{body}\n</body></html>\n"
    ))
}

async fn list(Query(q): Query<ListQuery>) -> Response {
    let n = q.page.unwrap_or(1);
    if n == 0 || n > pages() {
        return (StatusCode::NOT_FOUND, "no such page").into_response();
    }
    let mut body = format!(
        "<h1>Books, page {n} of {}</h1>\n<ul class=\"books\">\n",
        pages()
    );
    for (i, (title, author, _, _)) in BOOKS
        .iter()
        .enumerate()
        .skip((n - 1) * PER_PAGE)
        .take(PER_PAGE)
    {
        body.push_str(&format!(
            "  <li><a class=\"title\" href=\"/books/{}\">{title}</a> <span>{author}</span></li>\n",
            i + 1
        ));
    }
    body.push_str("</ul>\n");
    if n < pages() {
        body.push_str(&format!(
            "<a class=\"next\" href=\"/books/?page={}\">next page</a>\n",
            n + 1
        ));
    }
    body.push_str(
        "<footer><a class=\"private\" href=\"/private/stats\">site statistics</a> \
         <a class=\"external\" href=\"https://example.com/\">elsewhere</a></footer>",
    );
    page(&format!("Books, page {n}"), &body).into_response()
}

async fn detail(Path(id): Path<String>) -> Response {
    let book = id
        .parse::<usize>()
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| BOOKS.get(i).map(|b| (i + 1, b)));
    let Some((id, (title, author, price, rating))) = book else {
        return (StatusCode::NOT_FOUND, "no such book").into_response();
    };
    let body = format!(
        "<div class=\"book\">\n<h1 class=\"title\">{title}</h1>\n<p class=\"author\">by {author}</p>\n\
         <p class=\"price\">Price: ¥{price}</p>\n<p>Rating: <span class=\"rating\">{rating}</span></p>\n\
         <img class=\"cover\" src=\"/covers/{id}.png\" alt=\"cover\">\n</div>\n\
         <a class=\"back\" href=\"/books/\">all books</a>"
    );
    page(title, &body).into_response()
}

async fn robots() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain")],
        "User-agent: *\nDisallow: /private/\n",
    )
}

async fn private() -> Html<String> {
    page(
        "Statistics",
        "<p>Crawlers must not see this (robots.txt).</p>",
    )
}

/// The site's routes.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/books/") }))
        .route("/books/", get(list))
        .route("/books/{id}", get(detail))
        .route("/robots.txt", get(robots))
        .route("/private/stats", get(private))
}

/// Serve the site on `listener` until the task is aborted.
pub fn serve(listener: tokio::net::TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router()).await {
            tracing::warn!(error = %e, "demo site ended with an error");
        }
    })
}

/// Bind `DEFAULT_ADDR`, or any free port on 127.0.0.1 when it is taken.
pub async fn bind() -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = match tokio::net::TcpListener::bind(DEFAULT_ADDR).await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Point tasks whose URLs use the demo site's default address at `actual` instead (when the
/// default port was taken). Returns how many URLs changed.
pub fn retarget(tasks: &mut [crate::model::task::TaskConfig], actual: SocketAddr) -> usize {
    let from = format!("http://{DEFAULT_ADDR}/");
    let to = format!("http://{actual}/");
    if from == to {
        return 0;
    }
    let mut n = 0;
    for t in tasks.iter_mut() {
        for u in t.urls.iter_mut() {
            if let Some(rest) = u.strip_prefix(&from) {
                *u = format!("{to}{rest}");
                n += 1;
            }
        }
    }
    n
}
