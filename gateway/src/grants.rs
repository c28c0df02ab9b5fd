//! Stored grants as the gateway sees them: a short-lived cache in front of
//! the store, so a storm of joins to `grant` rooms costs one query per user
//! per half second, while a grant made through the API still takes effect
//! for new joins within a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_common::rooms::RoomPattern;
use herald_store::{Store, StoreError};

/// How long a user's grants are reused.
const TTL: Duration = Duration::from_millis(500);
/// Entries kept at most; past it the cache starts over (stale entries of
/// users long gone must not pile up).
const MAX_ENTRIES: usize = 50_000;

type Entry = (Instant, Arc<Vec<RoomPattern>>);

/// Cached grant look-ups.
pub struct GrantCache {
    store: Option<Store>,
    entries: Mutex<HashMap<Vec<String>, Entry>>,
}

impl GrantCache {
    pub fn new(store: Option<Store>) -> Self {
        Self {
            store,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<String>, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The patterns granted to any of `subjects` (`user:<id>`, `role:<r>`).
    /// `fresh` skips the cache (re-checks after a revocation). Without a
    /// store there are no grants.
    pub async fn patterns(
        &self,
        subjects: Vec<String>,
        fresh: bool,
    ) -> Result<Arc<Vec<RoomPattern>>, StoreError> {
        let Some(store) = &self.store else {
            return Ok(Arc::default());
        };
        if !fresh
            && let Some((at, patterns)) = self.entries().get(&subjects)
            && at.elapsed() < TTL
        {
            return Ok(patterns.clone());
        }
        let patterns: Vec<RoomPattern> = store
            .grants_for(&subjects)
            .await?
            .iter()
            // Patterns were validated by the API; skip any that are not.
            .filter_map(|p| RoomPattern::parse(p).ok())
            .collect();
        let patterns = Arc::new(patterns);
        let mut entries = self.entries();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(subjects, (Instant::now(), patterns.clone()));
        Ok(patterns)
    }
}
