//! SmolLM2's chat template (ChatML).

use crate::{ChatMessage, Role};

/// The conversation in ChatML, ending with an open assistant turn. A trailing assistant message
/// is left open, so the model continues it.
pub(crate) fn chatml(messages: &[ChatMessage]) -> String {
    let (open, closed) = match messages.split_last() {
        Some((last, rest)) if last.role == Role::Assistant => (Some(last), rest),
        _ => (None, messages),
    };
    let mut prompt = String::new();
    for m in closed {
        let role = match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        prompt.push_str(&format!("<|im_start|>{role}\n{}<|im_end|>\n", m.content));
    }
    prompt.push_str("<|im_start|>assistant\n");
    if let Some(partial) = open {
        prompt.push_str(&partial.content);
    }
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_ends_with_an_open_assistant_turn() {
        let prompt = chatml(&[
            ChatMessage::new(Role::System, "s"),
            ChatMessage::new(Role::User, "u"),
        ]);
        assert_eq!(
            prompt,
            "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"
        );
        let continued = chatml(&[
            ChatMessage::new(Role::User, "u"),
            ChatMessage::new(Role::Assistant, "Half an"),
        ]);
        assert!(
            continued.ends_with("<|im_start|>assistant\nHalf an"),
            "{continued}"
        );
    }
}
