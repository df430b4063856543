//! Submit a job through the SDK and follow it to the end.
//!
//! ```sh
//! allot server --dev            # in one shell; paste its export lines into another
//! cargo run -p allot-sdk --example submit_and_watch
//! ```

use allot_sdk::{Client, JobSpec, is_final};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("ALLOT_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7070".into());
    let token = std::env::var("ALLOT_TOKEN").map_err(|_| "set ALLOT_TOKEN (allot server --dev prints it)")?;
    let client = Client::connect(addr, token).await?;

    let spec = JobSpec::new("sh")
        .name("hello-gpu")
        .args(["-c", "echo \"running on $CUDA_VISIBLE_DEVICES\"; sleep 1"])
        .gpus(1)
        .time_limit_secs(60)
        .tag("team", "docs");
    let job = client.submit(spec).await?;
    println!("submitted {} ({:?})", job.id, job.state());

    let mut updates = Box::pin(client.watch(&job.id).await?);
    while let Some(update) = updates.next().await {
        let job = update?;
        println!("{:?}: {}", job.state(), job.reason);
        if is_final(job.state()) {
            break;
        }
    }
    let out = client.logs(&job.id, 0, 0).await?;
    print!("{}", String::from_utf8_lossy(&out.data));
    Ok(())
}
