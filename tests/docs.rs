//! The documentation keeps up with the code it describes.

/// docs/PROTOCOL.md embeds the schema verbatim so that a node implementer
/// needs nothing else; this keeps the copy exact.
#[test]
fn protocol_doc_embeds_the_current_schema() {
    let doc = include_str!("../docs/PROTOCOL.md");
    let schema = include_str!("../schema/imrouter.fbs");
    let appendix = doc
        .split("## Appendix: schema/imrouter.fbs\n\n```fbs\n")
        .nth(1)
        .expect("the appendix heading");
    let embedded = appendix
        .strip_suffix("```\n")
        .expect("the appendix ends the document");
    assert_eq!(
        embedded, schema,
        "regenerate the appendix: it must equal schema/imrouter.fbs"
    );
}

/// The slot-function test vectors in the doc are the ones the unit tests
/// check (spot-checked here against the implementation).
#[test]
fn protocol_doc_test_vectors_hold() {
    use imrouter::placement::{shard_for_user, slot_for_user, xxh64};
    let doc = include_str!("../docs/PROTOCOL.md");
    for (user, hash, slot) in [
        ("alice", 0x73a3ea485f2e6049u64, 8265u16),
        ("user-42", 0x397e9d3a76af7c81, 15489),
    ] {
        assert_eq!(xxh64(user.as_bytes(), 0), hash);
        assert_eq!(slot_for_user(user.as_bytes()), slot);
        let row = format!("| `{user}` | `{hash:016x}` | {slot} |");
        assert!(doc.contains(&row), "missing row {row}");
    }
    assert_eq!(shard_for_user(b"user-42", 8), 7);
}

/// docs/OPERATIONS.md describes every metric `/metrics` writes and every
/// Error code a node can see.
#[test]
fn operations_doc_covers_every_metric_and_error_code() {
    let doc = include_str!("../docs/OPERATIONS.md");
    for name in imrouter::metrics::metric_names() {
        // A histogram is documented once, by its family name.
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .filter(|family| imrouter::metrics::HISTOGRAM_NAMES.contains(family))
            .unwrap_or(&name);
        assert!(
            doc.contains(&format!("`{family}`")),
            "docs/OPERATIONS.md does not describe {family}"
        );
    }
    for code in imrouter::wire::fb::ErrorCode::ENUM_VALUES {
        let name = code.variant_name().unwrap();
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "docs/OPERATIONS.md does not explain the Error code {name}"
        );
    }
}
