//! A bare axum server answering a fixed 100-byte JSON body: the ceiling the
//! bench compares tresor against on the same machine in the same run.

use axum::{routing::get, Router};

const BODY: &str = r#"{"request_id":"00000000-0000-0000-0000-000000000000","data":{"value":"bench-payload-0123456789"}}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8299".to_string());
    let app = Router::new().route(
        "/",
        get(|| async { ([("content-type", "application/json")], BODY) }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
