//! Feeds arbitrary bytes to the wire codec: a startup packet, then framed messages, each run
//! through every parser; as query text, to the statement splitter and classifier; and, as
//! RESP, to the Redis reply framer and command reader. Any panic, or a parsed message that
//! does not rebuild to the same bytes, is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_pooler::protocol::exercise_decoders;
use weir_pooler::redis::resp;
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
    // The relay's shortcut reads raw bytes: where it finds nothing to track, nor may the scan.
    if sql::plain_query(data) {
        let text = String::from_utf8_lossy(data);
        assert!(sql::effects(&text).all(|(_, e)| e == sql::Effect::Other));
    }
    // Redis clients and servers send RESP; a frame found must lie within the bytes.
    if let Ok(Some(n)) = resp::frame_len(data) {
        assert!(n <= data.len());
    }
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(cmd)) = resp::next_command(&mut buf) {
        assert!(!cmd.args.is_empty());
    }
});
