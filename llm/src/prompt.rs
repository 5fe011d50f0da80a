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

/// The grounded-answer prompt: the passages, numbered for citation, then the question.
pub fn rag_messages(question: &str, passages: &[Passage<'_>]) -> Vec<ChatMessage> {
    let mut context = String::new();
    for (i, p) in passages.iter().enumerate() {
        context.push_str(&format!("[{}] (from {}) {}\n\n", i + 1, p.doc_id, p.text.trim()));
    }
    vec![
        ChatMessage::new(Role::System, SYSTEM),
        ChatMessage::new(
            Role::User,
            format!("Passages:\n\n{context}Question: {}", question.trim()),
        ),
    ]
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
        assert_eq!(
            messages[1].content,
            "Passages:\n\n[1] (from a) alpha\n\n[2] (from b) beta\n\nQuestion: why?"
        );
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
