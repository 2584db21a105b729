//! The shell's progress bar: a statement still running after `--progress-after` (one
//! second unless set) gets a bar on stderr (indicatif), updated every [`TICK`] until its
//! result prints, then cleared.
//! Only when stdout and stderr are terminals: a shell whose output goes to a file or a
//! pipe never draws one.
//!
//! On the embedded database the bar reads the statement's [`StatementProgress`] (the
//! blocks its scans have read of the blocks they will read, as `tessera_progress`
//! shows); against a server (`--connect`) it shows the server's progress NOTICEs (the
//! shell sets `tessera.progress_notice_after` to `--progress-after` on its connection).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tessera_planner::progress::StatementProgress;

use crate::activity::phase;

/// How often the bar is updated.
const TICK: Duration = Duration::from_millis(100);

/// Where a running statement's progress comes from.
#[derive(Clone)]
pub(super) enum ProgressFeed {
    /// The embedded database's counters.
    Local(Arc<StatementProgress>),
    /// The last progress NOTICE the server sent on the shell's connection.
    Notices(Arc<Mutex<Option<String>>>),
}

/// The bar of one statement.
pub(super) struct StatementBar {
    bar: ProgressBar,
    feed: ProgressFeed,
    started: Instant,
    /// How long the statement runs before the bar shows.
    after: Duration,
    shown: bool,
    /// Whether the terminal may get a bar at all.
    enabled: bool,
}

impl StatementBar {
    /// The bar of a statement starting now (hidden until it has run `after`).
    pub(super) fn start(feed: ProgressFeed, after: Duration) -> StatementBar {
        match &feed {
            ProgressFeed::Local(progress) => progress.reset(),
            ProgressFeed::Notices(last) => {
                *last.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        StatementBar {
            bar: ProgressBar::hidden(),
            feed,
            started: Instant::now(),
            after,
            shown: false,
            enabled: std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
        }
    }

    /// A handle that clears the bar (before a result prints).
    pub(super) fn handle(&self) -> ProgressBar {
        self.bar.clone()
    }

    /// Updates the bar, showing it once the statement has run `after`.
    fn tick(&mut self) {
        if !self.enabled || self.bar.is_finished() || self.started.elapsed() < self.after {
            return;
        }
        if !self.shown {
            let template = match self.feed {
                ProgressFeed::Local(_) => {
                    "{spinner} {elapsed:>4} [{bar:30}] {pos}/{len} blocks, {msg}"
                }
                ProgressFeed::Notices(_) => "{spinner} {elapsed:>4} {msg}",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                self.bar.set_style(style.progress_chars("=> "));
            }
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
        match &self.feed {
            ProgressFeed::Local(progress) => {
                let reading = progress.read();
                self.bar.set_length(reading.blocks_total);
                self.bar.set_position(reading.blocks_done);
                self.bar.set_message(phase(&reading));
            }
            ProgressFeed::Notices(last) => {
                let line = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
                self.bar
                    .set_message(line.unwrap_or_else(|| "running".to_string()));
            }
        }
        self.bar.tick();
    }

    /// Removes the bar from the terminal.
    pub(super) fn clear(&self) {
        self.bar.finish_and_clear();
    }

    /// Awaits `work`, updating the bar meanwhile.
    pub(super) async fn run<F: Future>(&mut self, work: F) -> F::Output {
        tokio::pin!(work);
        let mut ticks = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                done = &mut work => {
                    self.clear();
                    return done;
                }
                _ = ticks.tick() => self.tick(),
            }
        }
    }
}
