//! `update-edge-loadtest`: a simulated device fleet against an update-edge node.
//!
//! Open loop: arrivals are scheduled at the target rate whatever the server does, and
//! every latency is measured from the arrival's intended start, so a slow server shows
//! up as latency, not as a lower request rate (no coordinated omission). Every run stops
//! after its request count or its duration, whichever comes first, and only targets
//! loopback unless `--allow-remote` is given.

mod report;
mod scenario;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::Rng;
use serde_json::Value;

use report::Recorder;
use scenario::{Kind, Scenario};

/// After the arrival window closes, outstanding sessions get this long to finish.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(
    name = "update-edge-loadtest",
    about = "Simulate a device fleet against an update-edge node"
)]
struct Args {
    /// Node base URL, e.g. http://127.0.0.1:8080
    #[arg(long)]
    target: String,
    /// Scenario TOML (loadtest/scenarios/*.toml).
    #[arg(long)]
    scenario: PathBuf,
    /// Product the devices belong to.
    #[arg(long, default_value = "loadtest")]
    product: String,
    /// Version devices report (the one before the new build).
    #[arg(long, default_value = "1.0.1")]
    from_version: String,
    /// An older version: devices that cannot use the delta report it.
    #[arg(long, default_value = "1.0.0")]
    old_version: String,
    /// Static artifact list instead of checks (JSON [{"url","size","blake3"}]), to drive
    /// the same downloads against any HTTP server (the nginx baseline).
    #[arg(long)]
    static_artifacts: Option<PathBuf>,
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long)]
    duration: Option<u64>,
    #[arg(long)]
    max_requests: Option<u64>,
    #[arg(long)]
    devices: Option<u64>,
    /// HTTP/2 (prior knowledge) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Write report.json and report.svg here.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Permit a target that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,
}

#[derive(Clone, Debug, serde::Deserialize)]
struct Artifact {
    url: String,
    size: u64,
    blake3: String,
}

struct Ctx {
    http: reqwest::Client,
    base: String,
    args: Args,
    sc: Scenario,
    rec: Mutex<Recorder>,
    start: Instant,
    statics: Option<Vec<Artifact>>,
    stop_at: Instant,
}

fn is_loopback(url: &str) -> anyhow::Result<bool> {
    let rest = url
        .split("://")
        .nth(1)
        .context("target must be a URL like http://127.0.0.1:8080")?;
    let hostport = rest.split('/').next().unwrap_or_default();
    let host = if let Some(h) = hostport.strip_prefix('[') {
        h.split(']').next().unwrap_or_default()
    } else {
        hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
    };
    if host == "localhost" {
        return Ok(true);
    }
    Ok(host
        .parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.allow_remote && !is_loopback(&args.target)? {
        bail!(
            "refusing non-loopback target {} (pass --allow-remote to permit)",
            args.target
        );
    }
    let mut sc = Scenario::load(&args.scenario)?;
    if let Some(r) = args.rate {
        sc.rate = r;
    }
    if let Some(d) = args.duration {
        sc.duration_secs = d;
    }
    if let Some(m) = args.max_requests {
        sc.max_requests = m;
    }
    if let Some(d) = args.devices {
        sc.devices = d;
    }
    anyhow::ensure!(
        sc.rate > 0.0 && sc.devices > 0 && sc.duration_secs > 0,
        "rate, devices and duration must be positive"
    );
    let statics = match &args.static_artifacts {
        Some(p) => Some(serde_json::from_slice::<Vec<Artifact>>(&std::fs::read(p)?)?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args, sc, statics))
}

async fn run(args: Args, sc: Scenario, statics: Option<Vec<Artifact>>) -> anyhow::Result<()> {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(sc.connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(
            sc.duration_secs + DRAIN_GRACE.as_secs() + 60,
        ));
    if args.http2 {
        b = b.http2_prior_knowledge();
    }
    let http = b.build()?;
    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        http,
        base: args.target.trim_end_matches('/').to_string(),
        stop_at: start + Duration::from_secs(sc.duration_secs) + DRAIN_GRACE,
        args,
        sc,
        rec: Mutex::new(Recorder::default()),
        start,
        statics,
    });
    let inflight = Arc::new(AtomicUsize::new(0));
    let progress = {
        let (ctx, inflight) = (ctx.clone(), inflight.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let r = ctx.rec.lock().unwrap_or_else(|e| e.into_inner());
                let p99 = if r.checks.is_empty() {
                    0.0
                } else {
                    r.checks.value_at_quantile(0.99) as f64 / 1000.0
                };
                eprint!(
                    "\r[{:>4.0}s] checks {} ({:.0}/s)  p99 {:.2} ms  downloads {}  {:.1} MB  in flight {}  errors {}   ",
                    ctx.start.elapsed().as_secs_f64(),
                    r.checks_done,
                    r.checks_done as f64 / ctx.start.elapsed().as_secs_f64(),
                    p99,
                    r.downloads_done,
                    r.bytes as f64 / 1e6,
                    inflight.load(Ordering::Relaxed),
                    r.errors
                );
            }
        })
    };
    let interval = Duration::from_secs_f64(1.0 / ctx.sc.rate);
    let window = Duration::from_secs(ctx.sc.duration_secs);
    let mut arrivals = 0u64;
    // A stride coprime with the fleet size visits every device id once per cycle, spread
    // over the id space.
    let stride = coprime_stride(ctx.sc.devices);
    for i in 0..ctx.sc.max_requests {
        let intended = ctx.start + interval.mul_f64(i as f64);
        if intended.duration_since(ctx.start) >= window {
            break;
        }
        tokio::time::sleep_until(intended.into()).await;
        arrivals += 1;
        if inflight.load(Ordering::Relaxed) >= ctx.sc.max_inflight {
            ctx.rec
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .error(intended - ctx.start, "overload (max_inflight)");
            continue;
        }
        let device = (i.wrapping_mul(stride)) % ctx.sc.devices;
        let (ctx2, inflight2) = (ctx.clone(), inflight.clone());
        inflight.fetch_add(1, Ordering::Relaxed);
        // Sessions are not joined one by one: keeping (and periodically pruning) a
        // handle per arrival stalled the arrival loop for ~100 ms every 100k arrivals,
        // which showed up as latency spikes. Completion is tracked by `inflight`.
        tokio::spawn(async move {
            let at = intended - ctx2.start;
            let r = tokio::time::timeout_at(ctx2.stop_at.into(), session(&ctx2, device, intended))
                .await;
            let err = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("timeout (run ended)".to_string()),
            };
            // Every session of every kind ends by itself before the run does (a slow
            // download stops at the window's end): one still running at `stop_at` is
            // stuck, and counts as an error like any other.
            if let Some(e) = err {
                ctx2.rec
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .error(at, &e);
            }
            inflight2.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Every session ends by `stop_at` (its own timeout), so this wait is bounded.
    while inflight.load(Ordering::Relaxed) > 0
        && Instant::now() < ctx.stop_at + Duration::from_secs(1)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    progress.abort();
    eprintln!();
    let elapsed = ctx.start.elapsed().min(window + DRAIN_GRACE);
    let rec = ctx.rec.lock().unwrap_or_else(|e| e.into_inner());
    let rep = report::build(
        &rec,
        &ctx.sc.name,
        &ctx.base,
        ctx.args.http2,
        elapsed.max(window.min(ctx.start.elapsed())),
        ctx.sc.devices,
        arrivals,
    );
    println!("{}", report::summary(&rep));
    std::fs::create_dir_all(&ctx.args.out)?;
    std::fs::write(
        ctx.args.out.join("report.json"),
        serde_json::to_vec_pretty(&rep)?,
    )?;
    std::fs::write(ctx.args.out.join("report.svg"), report::svg(&rep))?;
    eprintln!(
        "wrote {}/report.json and report.svg",
        ctx.args.out.display()
    );
    Ok(())
}

fn coprime_stride(n: u64) -> u64 {
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let mut s = 1_000_003u64 % n.max(1);
    while s == 0 || gcd(s, n) != 1 {
        s += 1;
    }
    s
}

/// One device's visit.
async fn session(ctx: &Ctx, device: u64, intended: Instant) -> Result<(), String> {
    let id = format!("dev-{device:07}");
    let artifact = match &ctx.statics {
        Some(list) => list[(device as usize) % list.len()].clone(),
        None => {
            let can_delta = rand::thread_rng().gen_bool(ctx.sc.delta_share.clamp(0.0, 1.0));
            let version = if can_delta || ctx.sc.kind == Kind::Checks {
                &ctx.args.from_version
            } else {
                &ctx.args.old_version
            };
            // A fresh nonce per check, as real devices send (the answer must echo it).
            let nonce = format!("{:032x}", rand::random::<u128>());
            let body = serde_json::json!({ "product": ctx.args.product, "device_id": id, "version": version, "nonce": nonce });
            let resp = ctx
                .http
                .post(format!("{}/v1/check", ctx.base))
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("check: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("check status {}", resp.status().as_u16()));
            }
            let v: Value = resp.json().await.map_err(|e| format!("check body: {e}"))?;
            let update = &v["update"];
            if v.get("signature").is_none() {
                return Err("check answer without signature".into());
            }
            if v["nonce"] != nonce.as_str() {
                return Err("check answer does not echo the nonce".into());
            }
            let latency = intended.elapsed();
            ctx.rec.lock().unwrap_or_else(|e| e.into_inner()).check(
                intended - ctx.start,
                latency,
                !update.is_null(),
            );
            if ctx.sc.kind == Kind::Checks || update.is_null() {
                return Ok(());
            }
            let arts = update["artifacts"]
                .as_array()
                .ok_or("answer without artifacts")?;
            let pick = if can_delta {
                arts.first()
            } else {
                arts.iter().find(|a| a["type"] == "full")
            };
            let a = pick.ok_or("no artifact")?;
            Artifact {
                url: a["url"].as_str().unwrap_or_default().to_string(),
                size: a["size"].as_u64().unwrap_or(0),
                blake3: a["blake3"].as_str().unwrap_or_default().to_string(),
            }
        }
    };
    let url = if artifact.url.starts_with("http") {
        artifact.url.clone()
    } else {
        format!("{}{}", ctx.base, artifact.url)
    };
    let verify = rand::thread_rng().gen_bool(ctx.sc.verify_sample.clamp(0.0, 1.0));
    match ctx.sc.kind {
        Kind::Checks => Ok(()),
        Kind::Downloads => download_pieces(ctx, &url, &artifact, verify).await,
        Kind::Resume => download_resumed(ctx, &url, &artifact).await,
        Kind::Slow => download_slow(ctx, &url).await,
    }
}

async fn fetch(
    ctx: &Ctx,
    url: &str,
    start: u64,
    end: u64,
    hasher: Option<&mut blake3::Hasher>,
) -> Result<u64, String> {
    let t = Instant::now();
    let mut resp = ctx
        .http
        .get(url)
        .header("Range", format!("bytes={start}-{}", end - 1))
        .send()
        .await
        .map_err(|e| format!("get: {e}"))?;
    if resp.status().as_u16() != 206 {
        return Err(format!("range status {}", resp.status().as_u16()));
    }
    let mut got = 0u64;
    let mut hasher = hasher;
    while let Some(b) = resp.chunk().await.map_err(|e| format!("body: {e}"))? {
        got += b.len() as u64;
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&b);
        }
        ctx.rec
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes(ctx.start.elapsed(), b.len() as u64);
    }
    if got != end - start {
        return Err(format!("short range: {got} of {}", end - start));
    }
    ctx.rec
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .piece(t.elapsed());
    Ok(got)
}

fn finish(ctx: &Ctx, artifact: &Artifact, hasher: Option<blake3::Hasher>) -> Result<(), String> {
    let mut r = ctx.rec.lock().unwrap_or_else(|e| e.into_inner());
    r.downloads_done += 1;
    if let Some(h) = hasher {
        if h.finalize().to_hex().as_str() == artifact.blake3 {
            r.verified += 1;
        } else {
            r.verify_failures += 1;
            return Err("hash mismatch".into());
        }
    }
    Ok(())
}

async fn download_pieces(
    ctx: &Ctx,
    url: &str,
    artifact: &Artifact,
    verify: bool,
) -> Result<(), String> {
    let mut hasher = verify.then(blake3::Hasher::new);
    let mut at = 0;
    while at < artifact.size {
        let end = (at + ctx.sc.piece_bytes).min(artifact.size);
        fetch(ctx, url, at, end, hasher.as_mut()).await?;
        at = end;
    }
    finish(ctx, artifact, hasher)
}

/// A whole-object GET whose body the caller reads.
async fn get_whole(ctx: &Ctx, url: &str) -> Result<reqwest::Response, String> {
    let resp = ctx
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("get: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status().as_u16()));
    }
    Ok(resp)
}

async fn download_resumed(ctx: &Ctx, url: &str, artifact: &Artifact) -> Result<(), String> {
    let cut = rand::thread_rng()
        .gen_range(artifact.size / 10..=artifact.size * 9 / 10)
        .max(1);
    let mut hasher = blake3::Hasher::new();
    // First attempt: read up to `cut` bytes of a whole-object GET, then drop the
    // connection mid-body.
    let mut resp = get_whole(ctx, url).await?;
    let mut got = 0u64;
    while got < cut {
        let Some(b) = resp.chunk().await.map_err(|e| format!("body: {e}"))? else {
            break;
        };
        let take = (cut - got).min(b.len() as u64) as usize;
        hasher.update(&b[..take]);
        got += take as u64;
        ctx.rec
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes(ctx.start.elapsed(), b.len() as u64);
    }
    drop(resp);
    ctx.rec.lock().unwrap_or_else(|e| e.into_inner()).resumed += 1;
    fetch(ctx, url, got, artifact.size, Some(&mut hasher)).await?;
    finish(ctx, artifact, Some(hasher))
}

/// A throttled download with no byte for this long is stuck (an error).
const SLOW_STALL: Duration = Duration::from_secs(20);

async fn download_slow(ctx: &Ctx, url: &str) -> Result<(), String> {
    let rate = ctx.sc.per_connection_bytes_per_sec.max(1) as f64;
    let stalled = || format!("stalled: no byte for {} s", SLOW_STALL.as_secs());
    let mut resp = tokio::time::timeout(SLOW_STALL, get_whole(ctx, url))
        .await
        .map_err(|_| stalled())??;
    let t0 = Instant::now();
    let mut got = 0u64;
    while let Some(b) = tokio::time::timeout(SLOW_STALL, resp.chunk())
        .await
        .map_err(|_| stalled())?
        .map_err(|e| format!("body: {e}"))?
    {
        got += b.len() as u64;
        ctx.rec
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes(ctx.start.elapsed(), b.len() as u64);
        let due = Duration::from_secs_f64(got as f64 / rate);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            if Instant::now() + wait > ctx.stop_at - DRAIN_GRACE {
                return Ok(()); // the run is over: a throttled download never finishes in it
            }
            tokio::time::sleep(wait).await;
        }
    }
    ctx.rec
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .downloads_done += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The package directory, read when the test runs (cargo sets it): a compile-time
    /// `env!` would keep the path of whichever checkout first built this binary into a
    /// shared target dir, and cargo does not rebuild when only that path changes.
    fn manifest_dir() -> std::path::PathBuf {
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
    }

    use super::*;

    #[test]
    fn only_loopback_targets_are_allowed_by_default() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:80/x",
            "http://127.9.9.9",
        ] {
            assert!(is_loopback(ok).unwrap(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://192.168.1.2",
            "http://example.com",
            "http://[2001:db8::1]:80",
        ] {
            assert!(!is_loopback(bad).unwrap(), "{bad}");
        }
    }

    #[test]
    fn stride_visits_every_device_once() {
        let n = 1000;
        let s = coprime_stride(n);
        let mut seen: Vec<u64> = (0..n).map(|i| (i * s) % n).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len() as u64, n);
    }

    #[test]
    fn shipped_scenarios_parse() {
        for e in std::fs::read_dir(manifest_dir().join("scenarios")).unwrap() {
            let p = e.unwrap().path();
            Scenario::load(&p).unwrap();
        }
    }
}
