use crate::{ChatMessage, Role};

/// A retrieved passage as the prompt shows it; numbered from 1 in the order given.
#[derive(Debug, Clone)]
pub struct Passage<'a> {
    pub doc_id: &'a str,
    pub text: &'a str,
}

const SYSTEM: &str = "You are ragway, a careful assistant. Answer the question using only the \
numbered passages. Cite the passages you use with their numbers in square brackets, like [1]. \
If the passages do not contain the answer, say that you do not know.";

/// The grounded-answer prompt: the instructions and the passages, numbered for citation, as the
/// system message; the question as the user message. Everything before the question depends on
/// the passages alone, so two questions over the same passages share that prefix (L4).
pub fn rag_messages(question: &str, passages: &[Passage<'_>]) -> Vec<ChatMessage> {
    let mut context = String::new();
    for (i, p) in passages.iter().enumerate() {
        context.push_str(&format!("\n\n[{}] (from {}) {}", i + 1, p.doc_id, p.text.trim()));
    }
    vec![
        ChatMessage::new(Role::System, format!("{SYSTEM}\n\nPassages:{context}")),
        ChatMessage::new(Role::User, format!("Question: {}", question.trim())),
    ]
}

/// A grounded prompt that fits a token budget, and what fitting it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    pub messages: Vec<ChatMessage>,
    /// Passages given (the first `passages` of those offered), some perhaps shortened.
    pub passages: usize,
    pub shortened: bool,
}

/// The shortest a passage is cut to before passages are left out instead.
const MIN_PASSAGE_WORDS: usize = 32;

/// [`rag_messages`] within `budget` tokens as counted by `count`: passages are first shortened
/// (all alike, keeping their beginnings), then the last ones left out, until the prompt fits.
/// With no passage left it is the bare question.
pub fn fit_rag_messages(
    question: &str,
    passages: &[Passage<'_>],
    budget: usize,
    count: impl Fn(&[ChatMessage]) -> usize,
) -> Fitted {
    let mut given = passages.len();
    let longest = passages
        .iter()
        .map(|p| p.text.split_whitespace().count())
        .max()
        .unwrap_or(0);
    let mut cap = longest;
    loop {
        let cut: Vec<String> = passages[..given]
            .iter()
            .map(|p| first_words(p.text, cap))
            .collect();
        let shown: Vec<Passage<'_>> = passages[..given]
            .iter()
            .zip(&cut)
            .map(|(p, text)| Passage {
                doc_id: p.doc_id,
                text,
            })
            .collect();
        let messages = rag_messages(question, &shown);
        if given == 0 || count(&messages) <= budget {
            return Fitted {
                messages,
                passages: given,
                shortened: cap < longest,
            };
        }
        if cap > MIN_PASSAGE_WORDS {
            cap = (cap * 3 / 4).max(MIN_PASSAGE_WORDS);
        } else {
            given -= 1;
            cap = longest;
        }
    }
}

fn first_words(text: &str, n: usize) -> String {
    text.split_whitespace().take(n).collect::<Vec<_>>().join(" ")
}

/// The passage numbers (1-based, as in the prompt) cited as `[n]` in `answer`, first use first,
/// each once; numbers outside `1..=passages` are ignored.
pub fn cited_passages(answer: &str, passages: usize) -> Vec<usize> {
    let mut cited = Vec::new();
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        // `[1, 3]` and `[1][3]` both cite 1 and 3.
        for part in rest[..close].split(',') {
            if let Ok(n) = part.trim().parse::<usize>() {
                if (1..=passages).contains(&n) && !cited.contains(&n) {
                    cited.push(n);
                }
            }
        }
        rest = &rest[close + 1..];
    }
    cited
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_are_numbered_in_order() {
        let passages = [
            Passage {
                doc_id: "a",
                text: "alpha",
            },
            Passage {
                doc_id: "b",
                text: " beta ",
            },
        ];
        let messages = rag_messages("why?", &passages);
        assert_eq!(messages[0].role, Role::System);
        assert!(
            messages[0]
                .content
                .ends_with("Passages:\n\n[1] (from a) alpha\n\n[2] (from b) beta"),
            "{}",
            messages[0].content
        );
        assert_eq!(
            (messages[1].role, messages[1].content.as_str()),
            (Role::User, "Question: why?")
        );
    }

    #[test]
    fn fitting_shortens_passages_then_leaves_the_last_out() {
        let long = vec!["word"; 400].join(" ");
        let passages: Vec<Passage<'_>> = (0..4)
            .map(|_| Passage {
                doc_id: "d",
                text: &long,
            })
            .collect();
        let words = |m: &[ChatMessage]| m.iter().map(|m| m.content.split_whitespace().count()).sum();
        let all = fit_rag_messages("q?", &passages, 10_000, words);
        assert_eq!((all.passages, all.shortened), (4, false));
        let shortened = fit_rag_messages("q?", &passages, 1_000, words);
        assert_eq!(shortened.passages, 4);
        assert!(shortened.shortened);
        assert!(words(&shortened.messages) <= 1_000);
        let fewer = fit_rag_messages("q?", &passages, 120, words);
        assert!(fewer.passages < 4 && fewer.passages > 0, "{}", fewer.passages);
        assert!(words(&fewer.messages) <= 120);
        let none = fit_rag_messages("q?", &passages, 5, words);
        assert_eq!(none.passages, 0);
    }

    #[test]
    fn citations_are_parsed_once_and_bounded() {
        assert_eq!(
            cited_passages("Yes [2]. Also [1, 2] and [7] and [x] [3]", 3),
            vec![2, 1, 3]
        );
        assert!(cited_passages("no markers", 3).is_empty());
        assert!(cited_passages("broken [1", 3).is_empty());
    }
}
