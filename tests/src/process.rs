//! Running host tools from the harness: a child process with its output captured and a hard
//! time limit, after which it is killed (no tool outlives the check that started it).

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs `command` with its output captured, killing it if it has not finished within `limit`.
/// Returns its exit status (`None` if it was killed) and its stdout and stderr.
pub fn run_with_limit(
    mut command: Command,
    limit: Duration,
) -> Result<(Option<ExitStatus>, String, String), String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read_all(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read_all(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            // Over the limit, or waiting failed: our own child, killed by its handle.
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    Ok((
        status,
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_over_their_limit_are_killed() {
        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        let start = Instant::now();
        let (status, _, _) = run_with_limit(sleep, Duration::from_millis(200)).unwrap();
        assert_eq!(status, None);
        assert!(start.elapsed() < Duration::from_secs(10));
        let mut echo = Command::new("sh");
        echo.args(["-c", "echo out; echo err >&2; exit 3"]);
        let (status, out, err) = run_with_limit(echo, Duration::from_secs(10)).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(3));
        assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
        let e = run_with_limit(
            Command::new("/nonexistent/sluice-tool"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.contains("cannot start"), "{e}");
    }
}
