//! `shoal events`: what the cluster saw happen, merged from every live peer.

use super::output::print_json;
use shoal_api::client::Client;
use shoal_types::ClusterEvent;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Keep printing new events as peers record them (until ^C).
    #[arg(long, short)]
    follow: bool,
    /// Only events newer than this: 30s, 10m, 2h, 1d.
    #[arg(long, value_parser = parse_since)]
    since: Option<Duration>,
    /// At most this many (the newest; 5000 at most).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Print JSON (an array; with --follow one object per line).
    #[arg(long)]
    json: bool,
}

fn parse_since(s: &str) -> Result<Duration, String> {
    shoal_events::parse_age(s).ok_or_else(|| format!("{s:?} is not an age: use a number and s, m, h or d (10m, 2h)"))
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    let since_ms = args.since.map_or(0, |d| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        now.saturating_sub(d).as_millis() as u64
    });
    let path = format!("/v1/events?since_ms={since_ms}&limit={}&follow={}", args.limit, args.follow);
    if args.follow {
        let json = args.json;
        client
            .stream_lines(hyper::Method::GET, &path, None::<&()>, move |e: ClusterEvent| {
                if json {
                    println!("{}", serde_json::to_string(&e).unwrap_or_default());
                } else {
                    println!("{}", line(&e));
                }
            })
            .await?;
        return Ok(ExitCode::SUCCESS);
    }
    let events: Vec<ClusterEvent> = client.get(&path).await?;
    if args.json {
        print_json(&events)?;
    } else if events.is_empty() {
        eprintln!("no events{}", args.since.map(|_| " in that time").unwrap_or_default());
    } else {
        for e in &events {
            println!("{}", line(e));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `2026-11-28T21:30:01.123Z  peer.dead        name=peer-2 generation=…  (seen by peer-0, peer-1)`
fn line(e: &ClusterEvent) -> String {
    let fields: Vec<String> = e
        .fields
        .iter()
        .filter(|(k, _)| k.as_str() != "peer" || !e.fields.contains_key("name"))
        .map(|(k, v)| match k.as_str() {
            // Ids as `shoal ps` and `content ls` show them.
            "container" | "cid" | "digest" => format!("{k}={}", v.get(..19).unwrap_or(v)),
            _ => format!("{k}={v}"),
        })
        .collect();
    let line = format!("{}  {:<20} {}  (seen by {})", utc(e.at_ms), e.kind, fields.join(" "), e.seen_by.join(", "));
    // What peers sent is printed, never interpreted by the terminal.
    line.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Milliseconds since the epoch as an RFC 3339 UTC time.
fn utc(ms: u64) -> String {
    let (secs, ms) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_in_utc() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(super::utc(1_795_898_861_756), "2026-11-28T20:47:41.756Z");
    }
}
