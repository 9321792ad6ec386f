//! Knobs and fault hooks for tests and the crash checker: smaller log buffers, a panic
//! injected where a broken invariant would panic, and a negative control that ignores
//! readers' pins. Nothing here is used by the engine itself.

use super::{LogCore, BUF_SIZE};
use crate::format::BLOCK;

impl LogCore {
    /// Test knob: log buffers of `size` bytes (a multiple of 4 KiB) for segments opened
    /// from now on, so small test segments span several buffers and exercise writing
    /// full buffers behind the appenders.
    pub fn set_buffer_size(&mut self, size: usize) {
        assert!(size >= BLOCK && size.is_multiple_of(BLOCK) && size <= BUF_SIZE);
        self.buf_size = size;
    }

    /// Test hook: the host's next poll of this log panics, as a broken invariant in the
    /// core would (see [`LogCore::check_injected_panic`]).
    pub fn inject_panic(&mut self) {
        self.inject_panic = true;
    }

    /// Panics if [`LogCore::inject_panic`] asked for it (the host calls this as it
    /// polls the log, inside the unwind boundary it keeps per log).
    pub fn check_injected_panic(&mut self) {
        if std::mem::take(&mut self.inject_panic) {
            panic!(
                "a panic injected into log {} (test hook)",
                self.paths.root.display()
            );
        }
    }

    /// Negative control for the crash checker: decide spares without looking at readers'
    /// pins, so mapped files get recycled (the simulated disk must refuse it).
    pub fn ignore_pins_for_test(&mut self) {
        self.rel.ignore_pins = true;
    }
}
