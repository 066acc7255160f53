use anyhow::{Context, Result};
use clap::Args;

use super::ModelArgs;
use crossenc::serve::{self, ServeConfig};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most padded tokens in one forward pass; concurrent requests are merged up to it.
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
    /// Most pairs (or texts to rerank) in one request; more is answered 413.
    #[arg(long, default_value_t = 1000)]
    max_client_batch_size: usize,
    /// Requests that may wait for inference; more are answered 503 at once.
    #[arg(long, default_value_t = 512)]
    max_concurrent_requests: usize,
    /// Largest request body in bytes; more is answered 413.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    body_limit: usize,
    /// Seconds that shutdown (SIGTERM, Ctrl-C) waits for open requests before closing them.
    #[arg(long, default_value_t = 20)]
    drain_seconds: u64,
    /// Seconds a connection may take to send a request's headers, counted from when it opened
    /// or was last answered, so idle keep-alive connections are closed after it too.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_seconds: u64,
    /// Seconds a request body may take to arrive after its headers; later is answered 408.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_seconds: u64,
    /// Require `Authorization: Bearer <key>` on every route but /health and /metrics (also
    /// read from CROSSENC_API_KEY, which keeps the key out of the process list).
    #[arg(long, env = "CROSSENC_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Log as JSON lines (one object per line) instead of human-readable text; the level comes
    /// from RUST_LOG (default `info`).
    #[arg(long, env = "JSON_OUTPUT")]
    json_output: bool,
}

/// The server's log on stderr: only `serve` sets it up, so the other commands' stderr (progress
/// bars, notes) stays as it is.
fn init_logging(json: bool) -> Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let set = if json {
        fmt.json().with_span_list(false).try_init()
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
    set.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

pub fn run(args: ServeArgs) -> Result<()> {
    init_logging(args.json_output)?;
    let ce = args.model.load()?;
    let cfg = ServeConfig {
        model_id: args.model.model.clone(),
        max_batch_tokens: args.max_batch_tokens,
        max_client_batch_size: args.max_client_batch_size,
        max_queue: args.max_concurrent_requests,
        body_limit: args.body_limit,
        drain: std::time::Duration::from_secs(args.drain_seconds),
        header_timeout: std::time::Duration::from_secs(args.header_timeout_seconds),
        body_timeout: std::time::Duration::from_secs(args.body_timeout_seconds),
        api_key: args.api_key.filter(|k| !k.is_empty()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        outln!("listening on http://{addr}")?;
        tracing::info!(model = %args.model.model, %addr, "listening");
        serve::serve(ce, cfg, listener, serve::shutdown_signal()).await?;
        outln!("shut down")?;
        Ok::<_, anyhow::Error>(())
    });
    // Connections closed at the drain deadline may still hold blocking work: don't wait.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
