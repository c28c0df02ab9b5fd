//! A progress bar on a terminal (indicatif draws nothing when stderr is not
//! one), and plain phase lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(4));
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Self { bar, quiet }
    }

    /// Starts a phase of `len` steps (0: a spinner with a message).
    pub fn phase(&self, what: &str, len: u64) {
        match &self.bar {
            Some(bar) => {
                let template = if len > 0 {
                    "{spinner} {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})"
                } else {
                    "{spinner} {prefix} {msg} ({elapsed})"
                };
                if let Ok(style) = ProgressStyle::with_template(template) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.reset();
                bar.set_length(len);
                bar.set_position(0);
                bar.set_prefix(what.to_string());
                bar.set_message("");
            }
            None if !self.quiet => eprintln!("loadtest: {what}"),
            None => {}
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    pub fn message(&self, msg: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg);
        }
    }

    /// A line that stays (above the bar on a terminal).
    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if !self.quiet => eprintln!("loadtest: {line}"),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
