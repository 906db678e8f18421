//! `peerctl attach`: the original's interactive terminal, done right.
//!
//! Two control connections: one sends (pipelined, like `send`), one tails
//! the inbox from now on (like `tail -n 0 -f`). What drives them depends on
//! stdin and stdout:
//!
//! - **Both terminals**: a line editor (`rustyline`) shows the prompt
//!   `<instance>> ` and reads lines on its own thread; arriving messages go
//!   through its external printer, which clears the prompt line, prints the
//!   message and redraws the prompt with the partial input, so arrivals
//!   never garble what is being typed. Ctrl-D or Ctrl-C leaves (after the
//!   lines typed so far are stored); history with the arrow keys.
//! - **Otherwise**: no prompt; each stdin line is a message, arrivals are
//!   printed to stdout like `peerctl tail` (one per line, flushed), and it
//!   exits at the end of input once every line is stored in the outbox.
//!
//! Empty lines are not sent. SIGINT, SIGTERM or SIGHUP stop the input the
//! same way: what was already read is stored, then it exits 0.

use std::io::{IsTerminal, Write};

use peerlink::control::{Entry, EntryRef, Request, Response, TailStart};
use tokio::sync::mpsc;

use crate::client::{Client, Target};
use crate::error::CtlError;
use crate::send::{self, Split};
use crate::tail;

/// Send batches in flight without a reply, at most.
const MAX_OUTSTANDING: usize = 32;

pub async fn run(target: &Target) -> Result<(), CtlError> {
    let sender = Client::connect(target).await?;
    let mut tail = Client::connect(target).await?;
    tail.send(&Request::Tail {
        start: TailStart::Last(0),
        follow: true,
        origin: None,
    })
    .await?;
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        match editor::Terminal::start(format!("{}> ", sender.daemon_instance)) {
            Ok(term) => return term.run(sender, tail).await,
            // A terminal the editor cannot drive (TERM=dumb, ...): the
            // plain line mode still works there.
            Err(e) => eprintln!("peerctl: no line editor ({e}); reading plain lines"),
        }
    }
    piped(sender, tail).await
}

/// Stdin lines in, arrivals to stdout.
async fn piped(sender: Client, tail: Client) -> Result<(), CtlError> {
    let (tx, rx) = mpsc::channel(4);
    let (max_message, instance) = (sender.max_message, sender.daemon_instance.clone());
    let reader = tokio::spawn(async move {
        send::read_stdin(tx, Split::Lines, max_message)
            .await
            .map_err(|e| e.explained(&instance))
    });
    let format = if crate::colour(&std::io::stdout()) {
        tail::Format::Styled
    } else {
        tail::Format::Text
    };
    let mut out = Out::Stdout(Box::new(tail::Printer::new(format)));
    session(rx, sender, tail, &mut out).await?;
    if reader.is_finished() {
        // Input ended: by EOF, or by an error that must not pass as EOF.
        if let Ok(Err(e)) = reader.await {
            return Err(e);
        }
    }
    Ok(())
}

/// Where arriving messages go.
enum Out {
    /// Through the line editor's printer thread.
    Editor(mpsc::Sender<String>),
    /// Straight to stdout, like `tail` (one write per batch).
    Stdout(Box<tail::Printer>),
}

impl Out {
    async fn show(&mut self, entries: &[Entry]) -> Result<(), CtlError> {
        match self {
            Out::Editor(tx) => {
                for e in entries {
                    let o = tail::origin_style(&e.origin);
                    let mut line =
                        format!("{o}[{}]{o:#} {}\n", e.origin, tail::shown_body(&e.body));
                    if !crate::colour(&std::io::stdout()) {
                        line = anstream::adapter::strip_str(&line).to_string();
                    }
                    // The printer thread is gone only if the terminal is.
                    let _ = tx.send(line).await;
                }
                Ok(())
            }
            Out::Stdout(printer) => {
                let mut out = std::io::stdout().lock();
                for e in entries {
                    printer.push(&EntryRef::from(e));
                    if printer.len() >= tail::WRITE_CHUNK {
                        printer.write_to(&mut out)?;
                    }
                }
                printer.write_to(&mut out)?;
                out.flush()?;
                Ok(())
            }
        }
    }

    async fn note(&mut self, text: String) {
        match self {
            Out::Editor(tx) => {
                let _ = tx.send(format!("({text})\n")).await;
            }
            Out::Stdout { .. } => eprintln!("peerctl: {text}"),
        }
    }
}

/// Send what `input` yields, show what arrives, until the input ends (or
/// a signal says to leave) and everything read is stored.
async fn session(
    mut input: mpsc::Receiver<Vec<Vec<u8>>>,
    mut sender: Client,
    mut tail: Client,
    out: &mut Out,
) -> Result<(), CtlError> {
    let mut outstanding = 0usize;
    let mut input_done = false;
    let leave = leave_signal();
    tokio::pin!(leave);
    loop {
        if input_done && outstanding == 0 {
            return Ok(());
        }
        tokio::select! {
            batch = input.recv(), if !input_done && outstanding < MAX_OUTSTANDING => match batch {
                Some(mut bodies) => {
                    bodies.retain(|b| !b.is_empty());
                    if !bodies.is_empty() {
                        sender.send(&Request::Send { bodies, wait: false, to: Vec::new() }).await?;
                        outstanding += 1;
                    }
                }
                None => input_done = true,
            },
            reply = sender.recv(), if outstanding > 0 => match reply? {
                Response::Sent { .. } => outstanding -= 1,
                Response::Error { kind, message } => return Err(CtlError::Daemon { kind, message }),
                other => return Err(CtlError::Protocol(format!("answered a send with {other:?}"))),
            },
            arrived = tail.recv() => match arrived? {
                Response::Entries(entries) => out.show(&entries).await?,
                Response::Gap { from, resume_at } => {
                    out.note(format!(
                        "messages {from}..{} were trimmed before they could be shown",
                        resume_at.saturating_sub(1)
                    ))
                    .await;
                }
                Response::CaughtUp { .. } => {}
                Response::Error { kind, message } => return Err(CtlError::Daemon { kind, message }),
                other => return Err(CtlError::Protocol(format!("answered tail with {other:?}"))),
            },
            () = &mut leave, if !input_done => input_done = true,
        }
    }
}

/// Resolves on SIGINT, SIGTERM or SIGHUP (Ctrl-C on Windows); never if the
/// handlers cannot be installed.
async fn leave_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            return;
        }
    }
    #[cfg(not(unix))]
    if tokio::signal::ctrl_c().await.is_ok() {
        return;
    }
    std::future::pending::<()>().await
}

/// The interactive side: `rustyline` on its own thread.
mod editor {
    use std::thread::JoinHandle;

    use rustyline::error::ReadlineError;
    use rustyline::{DefaultEditor, ExternalPrinter};
    use tokio::sync::mpsc;

    use super::{Out, session};
    use crate::client::Client;
    use crate::error::CtlError;

    /// A running line editor.
    pub struct Terminal {
        lines: mpsc::Receiver<Vec<Vec<u8>>>,
        print: mpsc::Sender<String>,
        editor: JoinHandle<Result<(), String>>,
        saved: saved::Mode,
    }

    impl Terminal {
        /// Start the editor thread and its printer.
        pub fn start(prompt: String) -> Result<Terminal, String> {
            let saved = saved::Mode::save();
            let (line_tx, lines) = mpsc::channel(16);
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            // The editor is made on the thread that uses it; only its
            // printer crosses over.
            let editor = std::thread::spawn(move || {
                let config = rustyline::Config::builder().auto_add_history(true).build();
                let made = DefaultEditor::with_config(config).and_then(|mut ed| {
                    let printer = ed.create_external_printer()?;
                    Ok((ed, printer))
                });
                let mut ed = match made {
                    Ok((ed, printer)) => {
                        let _ = ready_tx.send(Ok(printer));
                        ed
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Ok(());
                    }
                };
                loop {
                    match ed.readline(&prompt) {
                        Ok(line) if line.is_empty() => {}
                        Ok(line) => {
                            if line_tx.blocking_send(vec![line.into_bytes()]).is_err() {
                                return Ok(());
                            }
                        }
                        Err(ReadlineError::Eof | ReadlineError::Interrupted) => return Ok(()),
                        Err(e) => return Err(e.to_string()),
                    }
                }
            });
            let mut printer = match ready_rx.recv() {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("the line editor did not start".into()),
            };
            let (print, mut print_rx) = mpsc::channel::<String>(64);
            std::thread::spawn(move || {
                while let Some(text) = print_rx.blocking_recv() {
                    if printer.print(text).is_err() {
                        break;
                    }
                }
            });
            Ok(Terminal {
                lines,
                print,
                editor,
                saved,
            })
        }

        /// Run until the user leaves; the terminal is left as it was found.
        pub async fn run(self, sender: Client, tail: Client) -> Result<(), CtlError> {
            let Terminal {
                lines,
                print,
                editor,
                saved,
            } = self;
            let mut out = Out::Editor(print);
            let result = session(lines, sender, tail, &mut out).await;
            drop(out);
            if !editor.is_finished() {
                // Still in the editor (the daemon went away, or a signal):
                // it cannot be interrupted, so restore the terminal here.
                saved.restore();
                return result;
            }
            match editor.join() {
                Ok(Err(e)) if result.is_ok() => Err(CtlError::Io(std::io::Error::other(format!(
                    "line editor: {e}"
                )))),
                _ => result,
            }
        }
    }

    /// The terminal mode to go back to when leaving with the editor still
    /// in raw mode.
    #[cfg(unix)]
    mod saved {
        use std::io::Write;

        use nix::sys::termios::{SetArg, Termios, tcgetattr, tcsetattr};

        pub struct Mode(Option<Termios>);

        impl Mode {
            pub fn save() -> Mode {
                Mode(tcgetattr(std::io::stdin()).ok())
            }

            pub fn restore(&self) {
                if let Some(t) = &self.0 {
                    let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, t);
                }
                // Bracketed paste off, and a fresh line for the shell.
                let mut out = std::io::stdout();
                let _ = out.write_all(b"\x1b[?2004l\r\n");
                let _ = out.flush();
            }
        }
    }

    #[cfg(not(unix))]
    mod saved {
        pub struct Mode;

        impl Mode {
            pub fn save() -> Mode {
                Mode
            }

            pub fn restore(&self) {}
        }
    }
}
