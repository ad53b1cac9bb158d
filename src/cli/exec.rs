//! `shoal exec [-i] NAME CMD...`: run a command in a running container; its output goes to
//! ours and its exit code becomes ours. With `-i`, our stdin is streamed to it.

use shoal_api::client::Client;
use shoal_types::ExecEvent;
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Keep stdin open and send it to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Container name or id prefix.
    container: String,
    /// Command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    let argv = serde_json::to_string(&args.command)?;
    let path = format!(
        "/v1/containers/{}/exec?args={}",
        super::lifecycle::encode(&args.container),
        super::lifecycle::encode(&argv)
    );
    let mut code = 255;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let on_item = |ev: ExecEvent| match ev {
        ExecEvent::Output(l) => {
            let w: &mut dyn Write = if l.stream == "stderr" { &mut err } else { &mut out };
            let _ = w.write_all(l.text.as_bytes());
            let _ = w.flush();
        }
        ExecEvent::Exit { code: c } => code = c,
    };
    let result = if args.interactive {
        client.stream_with_input(hyper::Method::POST, &path, tokio::io::stdin(), on_item).await
    } else {
        client.stream_lines(hyper::Method::POST, &path, None::<&()>, on_item).await
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(126));
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
