//! A chat over a collection: what to search for when the last question leans on the turns before
//! it ("What is it made of?"). The LLM pool condenses the conversation into a standalone question
//! when it can do so quickly; otherwise (no earlier turn to lean on, no backend the tenant may
//! use, too little time, a failure) the search is the last question followed by the user's earlier
//! questions, most recent first — deterministic, and never an error.

use std::time::Duration;

use ragway_llm::{ChatMessage, GenerationRequest, Role};
use ragway_openapi::TokenUsage;

use crate::answer::pool::LlmPool;
use crate::answer::report::{Report, Rewrite};
use crate::resilience::deadline::Deadline;
use crate::tenancy::Allowance;

/// Turns of the conversation before the question that the answer prompt and the rewrite see.
const RECENT_TURNS: usize = 6;
/// Characters of one earlier turn kept.
const TURN_CHARS: usize = 1_000;
/// Earlier user questions the fallback search adds.
const FALLBACK_QUESTIONS: usize = 2;
/// The longest the rewrite may take, and the least time it must leave for the answer.
const REWRITE_AT_MOST: Duration = Duration::from_secs(4);
const LEAVE_FOR_ANSWER: Duration = Duration::from_secs(4);
/// A rewrite longer than this is not a question.
const REWRITE_MAX_CHARS: usize = 400;

const REWRITE_PROMPT: &str = "Rewrite the user's last question as one standalone search question \
that can be understood without the conversation: replace pronouns and references with what they \
refer to. Answer with the question only, on one line.";

/// The question as asked, what to search for, and the recent turns before it.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub question: String,
    pub search: String,
    pub history: Vec<ChatMessage>,
    pub rewrite: Rewrite,
    /// The backend that rewrote the question and the tokens it took, to charge to the tenant.
    pub rewritten_by: Option<(String, TokenUsage)>,
}

impl Conversation {
    /// A single question, searched as asked.
    pub fn single(question: &str) -> Self {
        Self {
            question: question.to_string(),
            search: question.to_string(),
            history: Vec::new(),
            rewrite: Rewrite::None,
            rewritten_by: None,
        }
    }

    /// The conversation's last user message and the turns before it; `None` without a user message.
    pub fn of(messages: &[ChatMessage]) -> Option<Self> {
        let last = messages.iter().rposition(|m| m.role == Role::User)?;
        let question = messages[last].content.clone();
        let earlier: Vec<ChatMessage> = messages[..last]
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| ChatMessage::new(m.role, m.content.chars().take(TURN_CHARS).collect::<String>()))
            .collect();
        let history = earlier[earlier.len().saturating_sub(RECENT_TURNS)..].to_vec();
        let mut conversation = Self::single(&question);
        if !history.is_empty() {
            conversation.search = fallback(&question, &history);
            conversation.rewrite = Rewrite::Concat;
            conversation.history = history;
        }
        Some(conversation)
    }

    /// Asks the LLM pool for a standalone question when there is history to lean on, a backend
    /// the tenant may use, and time for it; keeps the fallback search otherwise.
    pub async fn condense(&mut self, pool: &LlmPool, deadline: &Deadline, allowance: &Allowance) {
        if self.history.is_empty() || allowance.budget_spent() {
            return;
        }
        let Some(budget) = deadline.remaining().checked_sub(LEAVE_FOR_ANSWER) else {
            return;
        };
        let within = Deadline::after(budget.min(REWRITE_AT_MOST));
        let request = self.rewrite_request();
        // The rewrite's own failures say nothing about the answer: its report is thrown away.
        let mut scratch = Report::default();
        let everyone = pool.everyone();
        let Ok(generation) = pool
            .generate(&everyone, &request, &within, &mut scratch, &allowance.llm)
            .await
        else {
            return;
        };
        let rewritten = generation.text.lines().next().unwrap_or_default().trim();
        let usage = TokenUsage {
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.completion_tokens,
        };
        self.rewritten_by = scratch.llm_backend().map(|b| (b.to_string(), usage));
        if !rewritten.is_empty() && rewritten.len() <= REWRITE_MAX_CHARS {
            self.search = rewritten.to_string();
            self.rewrite = Rewrite::Llm;
        }
    }

    fn rewrite_request(&self) -> GenerationRequest {
        let mut transcript = String::new();
        for turn in &self.history {
            let who = if turn.role == Role::User {
                "User"
            } else {
                "Assistant"
            };
            transcript.push_str(&format!("{who}: {}\n", turn.content.trim()));
        }
        transcript.push_str(&format!("User: {}", self.question.trim()));
        GenerationRequest {
            messages: vec![
                ChatMessage::new(Role::System, REWRITE_PROMPT.to_string()),
                ChatMessage::new(Role::User, format!("{transcript}\n\nStandalone question:")),
            ],
            max_tokens: 48,
            temperature: 0.0,
            prefix_scope: None,
        }
    }
}

/// The last question, then the user's earlier questions, most recent first.
fn fallback(question: &str, history: &[ChatMessage]) -> String {
    let earlier = history
        .iter()
        .rev()
        .filter(|m| m.role == Role::User)
        .take(FALLBACK_QUESTIONS)
        .map(|m| m.content.trim());
    std::iter::once(question.trim())
        .chain(earlier)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: Role, text: &str) -> ChatMessage {
        ChatMessage::new(role, text.to_string())
    }

    #[test]
    fn a_single_question_is_searched_as_asked() {
        let c = Conversation::of(&[
            turn(Role::System, "be brief"),
            turn(Role::User, "What is a transistor?"),
        ]);
        let c = c.unwrap_or_else(|| Conversation::single(""));
        assert_eq!(
            (c.search.as_str(), c.rewrite, c.history.len()),
            ("What is a transistor?", Rewrite::None, 0)
        );
    }

    #[test]
    fn the_fallback_puts_the_last_question_first_then_earlier_ones() {
        let messages = [
            turn(Role::User, "Tell me about violins."),
            turn(Role::Assistant, "They have four strings."),
            turn(Role::User, "Tell me about the transistor."),
            turn(Role::Assistant, "It is a semiconductor device."),
            turn(Role::User, "What is it made of?"),
        ];
        let c = Conversation::of(&messages).unwrap_or_else(|| Conversation::single(""));
        assert_eq!(c.rewrite, Rewrite::Concat);
        assert_eq!(c.question, "What is it made of?");
        assert_eq!(
            c.search,
            "What is it made of? Tell me about the transistor. Tell me about violins."
        );
        assert_eq!(c.history.len(), 4);
        assert!(
            Conversation::of(&[turn(Role::Assistant, "hi")]).is_none(),
            "no user message"
        );
    }
}
