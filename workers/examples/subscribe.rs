//! A downstream team's consumer of wxpipe's events, runnable as it stands:
//!
//! ```sh
//! cargo run -p wxpipe-workers --example subscribe -- \
//!     --queue myteam.texts --pattern 'authorizer.*.text' --pattern 'authorizer.*.event.subscribe'
//! ```
//!
//! It declares its own durable quorum queue, binds it to `{ns}.events` with the given patterns,
//! and prints each event. Events carry a stable `id`: a push WeChat retried, or one redelivered
//! after a worker crash, has the same `id`, so remembering recent ids makes handling idempotent.

use clap::Parser;
use common::event::CloudEvent;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use std::collections::{HashSet, VecDeque};

#[derive(Parser)]
#[command(about = "Print wxpipe events matching routing-key patterns")]
struct Args {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "WXPIPE_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// wxpipe's namespace: the exchange is `{namespace}.events`.
    #[arg(long, env = "WXPIPE_NAMESPACE", default_value = "wxpipe")]
    namespace: String,
    /// Your queue (durable: events wait there while you are away).
    #[arg(long, default_value = "example.subscriber")]
    queue: String,
    /// Routing-key patterns (`*` one word, `#` any words); repeat for several.
    #[arg(long = "pattern", default_value = "#")]
    patterns: Vec<String>,
    /// Stop after this many events (default: run until Ctrl-C).
    #[arg(long)]
    count: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let conn = Connection::connect(&args.amqp_url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut queue_args = FieldTable::default();
    queue_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        args.queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        queue_args,
    )
    .await?;
    let exchange = format!("{}.events", args.namespace);
    for pattern in &args.patterns {
        ch.queue_bind(
            args.queue.as_str().into(),
            exchange.as_str().into(),
            pattern.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    ch.basic_qos(32, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            args.queue.as_str().into(),
            "example-subscriber".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!(
        "consuming {} (bound to {exchange} with {:?})",
        args.queue, args.patterns
    );

    // Recently seen ids: a retried or redelivered push is handled once.
    let mut seen = HashSet::new();
    let mut order = VecDeque::new();
    let mut handled = 0;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        match serde_json::from_slice::<CloudEvent>(&delivery.data) {
            Ok(event) if seen.contains(&event.id) => eprintln!("duplicate {} dropped", event.id),
            Ok(event) => {
                println!(
                    "{} {} {}",
                    delivery.routing_key,
                    event.id,
                    serde_json::to_string(&event.data)?
                );
                seen.insert(event.id.clone());
                order.push_back(event.id);
                if order.len() > 100_000
                    && let Some(old) = order.pop_front()
                {
                    seen.remove(&old);
                }
                handled += 1;
            }
            Err(e) => eprintln!("not a CloudEvent ({e}); acked and skipped"),
        }
        delivery.ack(BasicAckOptions::default()).await?;
        if args.count.is_some_and(|c| handled >= c) {
            break;
        }
    }
    conn.close(200, "bye".into()).await?;
    Ok(())
}
