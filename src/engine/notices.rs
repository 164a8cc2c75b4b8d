//! Lost-hold notices pushed to open keep-alive streams.
//!
//! A session's client hears of a hold it lost (revoked, visibility timeout,
//! deleted primitive) in its next keep-alive reply, at most a third of its
//! TTL later. To tell it at once, each keep-alive stream subscribes for its
//! session here, and the engine posts the sessions that got a notice once
//! the turn that added it is durable (so nothing is told that a crash could
//! take back). The stream then reads the notices (`PendingNotices`) and
//! pushes them.
//!
//! Each subscription has its own [`Notify`], whose stored permit keeps a
//! post that comes while the stream is busy; subscriptions end when
//! dropped, so the board holds one entry per open keep-alive stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::core::SessionId;

/// The subscriptions of each session: (subscription id, its wake-up).
type Listeners = HashMap<SessionId, Vec<(u64, Arc<Notify>)>>;

/// Who listens for notices of which session.
#[derive(Debug, Default)]
pub struct NoticeBoard {
    listeners: Mutex<Listeners>,
    next_id: AtomicU64,
}

impl NoticeBoard {
    /// Listens for notices of `session_id` until the subscription is
    /// dropped.
    pub fn subscribe(self: &Arc<Self>, session_id: SessionId) -> NoticeSubscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.lock()
            .entry(session_id)
            .or_default()
            .push((id, notify.clone()));
        NoticeSubscription {
            board: self.clone(),
            session_id,
            id,
            notify,
        }
    }

    /// Wakes every subscription of `session_id` (a no-op without one).
    pub fn post(&self, session_id: SessionId) {
        if let Some(listeners) = self.lock().get(&session_id) {
            for (_, notify) in listeners {
                notify.notify_one();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Listeners> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

/// One keep-alive stream's interest in its session's notices.
#[derive(Debug)]
pub struct NoticeSubscription {
    board: Arc<NoticeBoard>,
    session_id: SessionId,
    id: u64,
    notify: Arc<Notify>,
}

impl NoticeSubscription {
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// Completes when a notice was posted since the last completion (or
    /// since subscribing).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for NoticeSubscription {
    fn drop(&mut self) {
        let mut listeners = self.board.lock();
        if let Some(list) = listeners.get_mut(&self.session_id) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                listeners.remove(&self.session_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_post_reaches_every_subscription_of_its_session_and_is_kept() {
        let board = Arc::new(NoticeBoard::default());
        let first = board.subscribe(7);
        let second = board.subscribe(7);
        let other = board.subscribe(8);
        // Posted before anyone waits: the permit is kept.
        board.post(7);
        first.notified().await;
        second.notified().await;
        let pending = tokio::time::timeout(std::time::Duration::from_millis(10), other.notified());
        assert!(pending.await.is_err(), "session 8 got nothing");
        drop((first, second, other));
        assert_eq!(board.len(), 0, "dropped subscriptions leave nothing");
        board.post(7);
    }
}
