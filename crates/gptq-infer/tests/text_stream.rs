//! Streamed text equals the whole output decoded at once: on stories260K's
//! tokenizer (SentencePiece-style, byte fallback), for every prefix of real
//! text (multi-byte characters split over byte tokens included) and for
//! random ids of its non-byte tokens, the pieces [`TextStream`] gives one
//! token at a time, flushed at the end, join to `decode(all)`. (Random byte
//! tokens are left out: a run of them that is not valid UTF-8 decodes to one
//! U+FFFD per byte, which rewrites text already shown — no stream can match
//! that.)

use gptq_infer::generate::TextStream;
use gptq_infer::Tokenizer;
use std::path::PathBuf;

fn tokenizer() -> Tokenizer {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/models/stories260K");
    let files = gptq_io::source::open_dir(&dir).expect("stories260K in ../shared");
    Tokenizer::from_model(&files).unwrap()
}

fn streamed(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut s = TextStream::default();
    let mut text = String::new();
    for n in 1..=ids.len() {
        if let Some(p) = s.next(tok, &ids[..n], false).unwrap() {
            text.push_str(&p);
        }
    }
    if let Some(p) = s.next(tok, ids, true).unwrap() {
        text.push_str(&p);
    }
    text
}

#[test]
fn streamed_text_is_the_whole_decode() {
    let tok = tokenizer();
    let text = "Once upon a time, there was a little girl named Lily. She loved to play outside \
                in the park — “sunny days!” — and eat 🍓 with her mom.\n\nThe end.";
    let ids = tok.encode(text, false).unwrap();
    assert!(ids.len() > 30);
    for n in 1..=ids.len() {
        let want = tok.decode(&ids[..n], true).unwrap();
        assert_eq!(streamed(&tok, &ids[..n]), want, "prefix of {n} tokens");
    }
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200 {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = 1 + (s >> 58) as usize;
        let ids: Vec<u32> = (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                259 + ((s >> 33) % (512 - 259)) as u32
            })
            .collect();
        assert_eq!(
            streamed(&tok, &ids),
            tok.decode(&ids, true).unwrap(),
            "{ids:?}"
        );
    }
}
