//! The Prometheus endpoint of a logdb process: plain `GET /metrics`, one response per connection,
//! the text rendered at each scrape.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `GET /metrics` (one response per connection) with the text `render` produces at each
/// scrape. Shared by every logdb process that exports metrics.
pub async fn serve<F>(listener: TcpListener, render: F)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let render = Arc::clone(&render);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            while len < buf.len() {
                match sock.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => len += n,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let (status, body) = if head.starts_with("GET /metrics ") {
                ("200 OK", render())
            } else {
                (
                    "404 Not Found",
                    "only GET /metrics is served here\n".to_string(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

/// The body of `GET /metrics` at `addr` (empty when the endpoint cannot be reached within two
/// seconds).
pub async fn scrape(addr: &str) -> String {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        std::io::Result::Ok(out)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), get).await {
        Ok(Ok(text)) => text,
        _ => String::new(),
    }
}

/// The sum of the values of every sample in `text` whose line starts with `prefix` (a metric
/// name, optionally with the start of its labels).
pub fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `q` quantile (0..1) of Prometheus histogram `name` over the observations made between two
/// scrapes (`before`, `after`), interpolated linearly within a bucket like PromQL's
/// `histogram_quantile`. `None` when nothing was observed.
pub fn histogram_quantile(before: &str, after: &str, name: &str, q: f64) -> Option<f64> {
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect()
    };
    let (b, a) = (buckets(before), buckets(after));
    let cum: Vec<(f64, f64)> = a
        .iter()
        .map(|(le, n)| {
            let old = b.iter().find(|(l, _)| l == le).map_or(0.0, |(_, n)| *n);
            (*le, n - old)
        })
        .collect();
    let total = cum.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, n) in cum {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = if n > below {
                (rank - below) / (n - below)
            } else {
                1.0
            };
            return Some(lower + (le - lower) * within);
        }
        (lower, below) = (le, n);
    }
    Some(lower)
}

/// The mean of histogram `name` over the observations made between two scrapes (`before` may be
/// empty: since the process started). `None` when nothing was observed.
pub fn histogram_mean(before: &str, after: &str, name: &str) -> Option<f64> {
    let delta = |series: &str| {
        let metric = format!("{name}_{series}");
        sum(after, &metric) - sum(before, &metric)
    };
    let n = delta("count");
    (n > 0.0).then(|| delta("sum") / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_from_bucket_deltas() {
        let before = "h_bucket{le=\"1.0\"} 10\nh_bucket{le=\"2.0\"} 10\nh_bucket{le=\"+Inf\"} 10\n";
        let after =
            "h_bucket{le=\"1.0\"} 60\nh_bucket{le=\"2.0\"} 110\nh_bucket{le=\"+Inf\"} 110\n";
        // 50 new observations in (0, 1], 50 in (1, 2].
        assert_eq!(histogram_quantile(before, after, "h", 0.5), Some(1.0));
        assert_eq!(histogram_quantile(before, after, "h", 0.25), Some(0.5));
        assert_eq!(histogram_quantile(before, after, "h", 0.99), Some(1.98));
        assert_eq!(histogram_quantile(after, after, "h", 0.5), None);
        assert_eq!(sum(after, "h_bucket{le=\"1.0\"}"), 60.0);
        let (b, a) = ("h_sum 10\nh_count 4\n", "h_sum 40\nh_count 14\n");
        assert_eq!(histogram_mean(b, a, "h"), Some(3.0));
        assert_eq!(histogram_mean("", a, "h"), Some(40.0 / 14.0));
        assert_eq!(histogram_mean(a, a, "h"), None);
    }
}
