//! When backups run: cron fire times in a time zone, jitter, the catch-up decision and retry delays.
//! Pure: the time is always a parameter.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A parsed cron schedule in a time zone, with its jitter.
#[derive(Clone)]
pub struct Schedule {
    cron: Cron,
    text: String,
    tz: Tz,
    jitter: Duration,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?} in {}, jitter {:?})", self.text, self.tz, self.jitter)
    }
}

impl Schedule {
    /// Parses a crontab expression: 5 fields, or 6 with seconds first.
    pub fn parse(text: &str, tz: Tz, jitter: Duration) -> Result<Schedule, String> {
        let fields = text.split_whitespace().count();
        if !(fields == 5 || fields == 6 || text.trim().starts_with('@')) {
            return Err(format!(
                "\"{text}\" has {fields} fields: expected 5 (minute hour day month weekday, like \"0 */6 * * *\") or 6 with seconds first"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(text)
            .map_err(|e| format!("\"{text}\" is not a cron schedule: {e}"))?;
        let schedule = Schedule { cron, text: text.trim().to_string(), tz, jitter };
        // A pattern that never fires (like 30 February) is useless as a schedule.
        let probe = DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(); // 2026-01-01
        if schedule.next_after(probe).is_none() {
            return Err(format!("\"{text}\" never fires"));
        }
        Ok(schedule)
    }

    /// The default schedule, every six hours.
    pub fn default_for(tz: Tz) -> Schedule {
        Schedule::parse(crate::config::DEFAULT_CRON, tz, Duration::ZERO).unwrap_or_else(|_| unreachable!())
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    pub fn jitter(&self) -> Duration {
        self.jitter
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after.with_timezone(&self.tz), false).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The last fire time at or before `at`.
    pub fn last_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&at.with_timezone(&self.tz), true).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The longest gap between two consecutive fires around `at` (the one before and the two after):
    /// a backup older than twice this is overdue.
    pub fn interval_around(&self, at: DateTime<Utc>) -> Option<Duration> {
        let prev = self.last_at_or_before(at)?;
        let next = self.next_after(at)?;
        let after = self.next_after(next)?;
        let gaps = [next - prev, after - next];
        gaps.iter().filter_map(|g| g.to_std().ok()).max()
    }
}

impl Schedule {
    /// The shortest gap between two consecutive fires among the first `fires` after `from`: a jitter
    /// as long as this would push one run past the next fire time.
    pub fn shortest_interval(&self, from: DateTime<Utc>, fires: usize) -> Option<Duration> {
        let mut at = self.next_after(from)?;
        let mut shortest: Option<Duration> = None;
        for _ in 0..fires {
            let Some(next) = self.next_after(at) else { break };
            let gap = (next - at).to_std().ok()?;
            shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
            at = next;
        }
        shortest
    }
}

/// The random delay added to a fire time: uniform in [0, jitter), from a random number.
pub fn jitter_delay(jitter: Duration, random: u64) -> Duration {
    let nanos = jitter.as_nanos();
    if nanos == 0 {
        return Duration::ZERO;
    }
    let offset = (u128::from(random) * nanos) >> 64;
    Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// What the daemon does when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtStart {
    /// Wait for the next fire time.
    Wait,
    /// A scheduled run was missed since the last attempt (`catch_up`): run now.
    CatchUp,
    /// No run is on record (a new install): back up now rather than leave the cluster unprotected
    /// until the first fire time, hours away.
    FirstBackup,
}

/// On start: back up now if nothing was ever attempted, or a fire was missed since the last attempt
/// (with `catch_up`); else wait for the schedule.
pub fn at_start(
    schedule: &Schedule,
    last_attempt: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    catch_up: bool,
) -> AtStart {
    match last_attempt {
        None => AtStart::FirstBackup,
        Some(last) if catch_up && schedule.last_at_or_before(now).is_some_and(|fire| fire > last) => AtStart::CatchUp,
        Some(_) => AtStart::Wait,
    }
}

/// Delay before retry `attempt` (1-based) of a failed run: `first` (30 s by default), then doubling
/// (1 min, 2 min, …), capped at 10 min or `first`, whichever is longer.
pub fn retry_delay(first: Duration, attempt: u32) -> Duration {
    let doubled = first.saturating_mul(1u32 << attempt.saturating_sub(1).min(10));
    doubled.min(Duration::from_secs(600).max(first))
}

#[cfg(test)]
mod tests;
