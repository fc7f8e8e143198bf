//! `sagactl dlq list|show|redrive`: the dead-letter queue.

use anyhow::{Context, bail};

use crate::cli::DlqCmd;
use crate::dlq;

pub(super) async fn run(command: DlqCmd, nats_url: &str, namespace: &str) -> anyhow::Result<()> {
    let ns = saga_shared::bus::Namespace::new(namespace)?;
    // Credentials and TLS as in the URL (`nats://user:pass@host`,
    // `tls://host`); the services' settings are not read here.
    let cfg = saga_shared::config::NatsConfig {
        url: nats_url.to_owned(),
        ..Default::default()
    };
    let client = saga_shared::nats::connect(&cfg, "sagactl dlq")
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(client);
    match command {
        DlqCmd::List => {
            let letters = dlq::list(&js, &ns).await?;
            println!("{} dead letters in {}", letters.len(), ns.dlq_stream());
            for l in letters {
                println!(
                    "  #{:<6} {}  {} from {} #{} (delivered {}x at {}): {}",
                    l.seq,
                    l.at,
                    l.subject,
                    l.consumer,
                    l.stream_seq,
                    l.delivered,
                    l.stream,
                    l.error.chars().take(160).collect::<String>()
                );
            }
        }
        DlqCmd::Show { seq } => {
            let l = dlq::get(&js, &ns, seq).await?;
            println!("dead letter #{} ({})", l.seq, l.at);
            println!(
                "  from     {} #{} via consumer {}",
                l.stream, l.stream_seq, l.consumer
            );
            println!("  subject  {}", l.subject);
            println!("  tried    {} times", l.delivered);
            println!("  error    {}", l.error);
            println!("  headers");
            let mut names: Vec<_> = l.headers.iter().collect();
            names.sort_by_key(|(name, _)| AsRef::<str>::as_ref(*name).to_owned());
            for (name, values) in names {
                for v in values {
                    println!("    {}: {}", AsRef::<str>::as_ref(name), v.as_str());
                }
            }
            match l.decoded(&ns) {
                Ok(event) => println!("  body\n    {event:?}"),
                Err(e) => println!("  body ({} bytes) does not decode: {e}", l.payload.len()),
            }
        }
        DlqCmd::Redrive { seqs, all, force } => {
            let seqs = if all {
                dlq::list(&js, &ns)
                    .await?
                    .into_iter()
                    .map(|l| l.seq)
                    .collect()
            } else {
                seqs
            };
            if seqs.is_empty() {
                if all {
                    println!("0 dead letters in {}", ns.dlq_stream());
                    return Ok(());
                }
                bail!("name the dead letters to redrive (see `sagactl dlq list`), or --all");
            }
            let inboxes = if force {
                None
            } else {
                // The services' schemas of the namespace whose DLQ this is.
                let cfg = crate::system::SystemConfig::from_env()?.with_namespace(namespace);
                Some(
                    dlq::Inboxes::open(&cfg)
                        .await
                        .context("reading the services' inboxes (or pass --force)")?,
                )
            };
            let guard = match &inboxes {
                Some(inboxes) => dlq::Guard::Inboxes(inboxes),
                None => dlq::Guard::Force,
            };
            let outcomes = dlq::redrive_all(&js, &ns, &seqs, guard).await;
            if let Some(inboxes) = inboxes {
                inboxes.close().await;
            }
            let mut failed = 0;
            for (seq, outcome) in outcomes {
                match outcome {
                    Ok(dlq::Redriven::SentBack(subject)) => {
                        println!("  #{seq} sent back to {subject}");
                    }
                    Ok(dlq::Redriven::AlreadyGone) => {
                        println!("  #{seq} already redriven (no longer in the DLQ)");
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("  #{seq} NOT sent back: {e:#}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} dead letters were not sent back", seqs.len());
            }
        }
    }
    Ok(())
}
