//! The hub: the bounded window of recent events that every connection of this instance reads
//! live. The listener publishes into it in position order; each event is encoded once and the
//! same bytes are shared by every connection that receives it.
//!
//! The window is a `tokio::sync::broadcast` ring of [`Frame`]s. A connection that falls out of it
//! (the ring reports how many frames it missed) goes back to the table from its own cursor, so a
//! slow client costs memory for neither the server nor anyone else. What a connection does with a
//! frame (filters, socket writes) is `connection`'s business.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::event::{Cursor, StoredEvent};
use crate::wire;

/// One event, with its encodings made at most once.
#[derive(Debug)]
pub struct Frame {
    /// The event.
    pub event: StoredEvent,
    /// The SSE frame of the JSON stream.
    pub sse: Bytes,
    /// The dashboard's HTML row frame, rendered by the first connection that needs it.
    html: OnceLock<Bytes>,
}

impl Frame {
    /// Encodes an event.
    pub fn new(event: StoredEvent) -> Self {
        let sse = wire::event_frame(&event);
        Frame {
            event,
            sse,
            html: OnceLock::new(),
        }
    }

    /// The dashboard encoding, rendered by `render` the first time any connection asks.
    pub fn html(&self, render: impl FnOnce(&StoredEvent) -> Bytes) -> Bytes {
        self.html.get_or_init(|| render(&self.event)).clone()
    }
}

/// The live window of one instance.
#[derive(Debug)]
pub struct Hub {
    sender: broadcast::Sender<Arc<Frame>>,
    /// The cursor of the newest published frame. Publishing and subscribing both hold this lock,
    /// so a subscriber learns exactly where its receiver starts.
    head: Mutex<Cursor>,
}

impl Hub {
    /// A hub keeping `capacity` recent frames, whose history ends at `head`.
    pub fn new(capacity: usize, head: Cursor) -> Self {
        let (sender, _) = broadcast::channel(capacity);
        Hub {
            sender,
            head: Mutex::new(head),
        }
    }

    /// Publishes events, which must come after every event published before, in position order.
    pub fn publish(&self, events: Vec<StoredEvent>) {
        let frames: Vec<Arc<Frame>> = events
            .into_iter()
            .map(|event| Arc::new(Frame::new(event)))
            .collect();

        let mut head = self
            .head
            .lock()
            .expect("the hub lock is never held across a panic");
        for frame in frames {
            debug_assert!(
                frame.event.cursor > *head,
                "frames are published in position order"
            );
            *head = frame.event.cursor;
            // No receivers is not an error: nobody is connected right now.
            let _ = self.sender.send(frame);
        }
    }

    /// A receiver of every frame published after the returned cursor.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Frame>>, Cursor) {
        let head = self
            .head
            .lock()
            .expect("the hub lock is never held across a panic");
        (self.sender.subscribe(), *head)
    }

    /// The cursor of the newest published frame.
    pub fn head(&self) -> Cursor {
        *self
            .head
            .lock()
            .expect("the hub lock is never held across a panic")
    }
}
