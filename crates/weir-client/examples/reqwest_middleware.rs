//! Swapping reqwest-retry for weir in a `reqwest-middleware` stack: one line changes.
//!
//! ```sh
//! cargo run -p weir-client --example reqwest_middleware -- http://127.0.0.1:8080/v1/echo
//! ```

use reqwest_middleware::ClientBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080/v1/echo".to_owned());
    let client = ClientBuilder::new(reqwest::Client::new())
        // Before:
        // .with(RetryTransientMiddleware::new_with_policy(ExponentialBackoff::builder().build_with_max_retries(3)))
        // After:
        .with(weir_client::middleware::WeirMiddleware::default())
        .build();
    let resp = client
        .get(&url)
        .header("authorization", "Bearer demo-free")
        .send()
        .await?;
    println!("{} {}", resp.status(), resp.text().await?);
    Ok(())
}
