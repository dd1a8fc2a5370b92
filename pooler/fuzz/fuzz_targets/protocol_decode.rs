//! Feeds arbitrary bytes to the wire codec: a startup packet, then framed messages, each run
//! through every parser; and, as query text, to the statement splitter and classifier. Any
//! panic, or a parsed message that does not rebuild to the same bytes, is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_pooler::protocol::exercise_decoders;
use weir_pooler::sql;

fuzz_target!(|data: &[u8]| {
    if let Err(codec) = exercise_decoders(data) {
        panic!("{codec} did not rebuild to the bytes it decoded");
    }
    // Query text comes from clients too, and the classifier indexes it by hand.
    if let Ok(text) = std::str::from_utf8(data) {
        for stmt in sql::statements(text) {
            let _ = sql::classify(stmt);
        }
        let _ = sql::effects(text).count();
    }
});
