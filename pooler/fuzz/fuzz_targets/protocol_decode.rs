//! Feeds arbitrary bytes to the wire codec: a startup packet, then framed messages, each run
//! through every parser. Any panic, or a parsed message that does not rebuild to the same
//! bytes, is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_pooler::protocol::exercise_decoders;

fuzz_target!(|data: &[u8]| {
    if let Err(codec) = exercise_decoders(data) {
        panic!("{codec} did not rebuild to the bytes it decoded");
    }
});
