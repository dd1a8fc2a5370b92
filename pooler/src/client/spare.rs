//! Read buffers of clients gone idle, kept on the worker thread for the next client that has
//! something to read.
//!
//! An idle client holds no read buffer (idle clients should cost almost nothing), so a busy
//! one gives its buffer up after every transaction and needs one again at its next request.
//! At 4 KiB that is above the allocator's small-block fast path: taken from here it costs a
//! thread-local pop instead (PgBouncer keeps its idle buffers in a slab cache the same way).
//! At most [`KEPT`] buffers of at most [`LARGEST`] bytes stay per thread.

use std::cell::RefCell;

use bytes::BytesMut;

/// Buffers kept per worker thread.
const KEPT: usize = 64;
/// A buffer that grew past this (a large message went through it) is freed, not kept.
const LARGEST: usize = 64 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `capacity` bytes.
pub(super) fn take(capacity: usize) -> BytesMut {
    let mut buf = SPARE
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_default();
    // No allocation when the buffer came from here with room enough (its allocation
    // unshared); otherwise one, as without the list.
    buf.reserve(capacity);
    buf
}

/// Keeps `buf` (emptied) for the next [`take`] on this thread, if there is room.
pub(super) fn give(mut buf: BytesMut) {
    if buf.capacity() == 0 || buf.capacity() > LARGEST {
        return;
    }
    buf.clear();
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < KEPT {
            spare.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_empty_and_large_ones_are_freed() {
        let mut buf = take(4096);
        assert!(buf.capacity() >= 4096);
        buf.extend_from_slice(b"Q\0\0\0\x0dSELECT 1\0");
        let at = buf.as_ptr();
        give(buf);
        let again = take(4096);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), at, "the same allocation");
        give(BytesMut::with_capacity(LARGEST + 1));
        assert!(
            SPARE.with(|spare| spare.borrow().is_empty()),
            "a grown buffer is not kept"
        );
        for _ in 0..KEPT + 1 {
            give(BytesMut::with_capacity(16));
        }
        assert_eq!(SPARE.with(|spare| spare.borrow().len()), KEPT);
    }
}
