//! The dead letters of every saga: one row per message, the consumer groups that rejected it
//! grouped in it.

use std::fmt::Write as _;

use super::escape::{escape, saga_href};
use super::layout::{document, Section};
use super::saga::{body, copies, redrive};
use crate::model::DeadLetter;

/// The page `/dead-letters`.
pub fn dead_letters_page(letters: &[DeadLetter]) -> String {
    let mut html = String::from("<h1>Dead letters</h1>\n<section id=\"dead-letters\">\n");
    if letters.is_empty() {
        html.push_str("<p class=\"muted\">No dead letters.</p>\n</section>\n");
        return document("Dead letters", Section::DeadLetters, false, &html);
    }
    html.push_str(
        "<table>\n<thead><tr><th>Saga</th><th>Type</th><th>From</th><th>Topic</th><th>Rejected by</th>\
         <th>Redrive</th><th>Body</th></tr></thead>\n<tbody>\n",
    );
    for letter in letters {
        let saga = match &letter.saga_id {
            Some(saga_id) => format!(
                "<a href=\"{}\"><code>{}</code></a>",
                escape(&saga_href(saga_id)),
                escape(saga_id)
            ),
            None => "<span class=\"muted\">unknown</span>".to_owned(),
        };
        let _ = writeln!(
            html,
            "<tr class=\"dead-letter\" data-id=\"{}\"><td>{saga}</td><td><code>{}</code></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&letter.id),
            escape(letter.event_type.as_deref().unwrap_or("undecodable")),
            escape(letter.source.as_deref().unwrap_or("")),
            escape(&letter.topic),
            copies(letter),
            // The saga's status is not known here: the server refuses a redrive of an ended
            // saga and says so.
            redrive(letter, None),
            body(letter),
        );
    }
    html.push_str("</tbody>\n</table>\n</section>\n");
    document("Dead letters", Section::DeadLetters, false, &html)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeadLetterCopy;
    use crate::pages::check::assert_well_formed;
    use crate::pages::fixtures::dead_letter;

    #[test]
    fn one_row_per_message_with_its_copies() {
        let mut twice = dead_letter("d1", "shipping");
        twice.copies.push(DeadLetterCopy {
            service: None,
            reason: "not a choreo event".to_owned(),
            recorded_at: "2025-01-01T10:00:02Z".to_owned(),
        });
        let mut redriven = dead_letter("d/2", "billing");
        redriven.redriven_at = Some("2025-01-01T11:00:00Z".to_owned());
        redriven.saga_id = None;
        let html = dead_letters_page(&[twice, redriven]);
        assert_well_formed(&html);
        assert_eq!(html.matches("<tr class=\"dead-letter\"").count(), 2);
        assert_eq!(html.matches("<li class=\"copy\">").count(), 3);
        assert!(html.contains("<span class=\"service\">unknown service</span>: <span class=\"reason\">not a choreo event</span>"));
        assert!(html.contains("<a href=\"/sagas/0190b5c2-0000-7000-8000-00000000abcd\">"));
        assert_eq!(html.matches(">Redrive</button>").count(), 1);
        assert!(html.contains("action=\"/dead-letters/d1/redrive\""));
        assert!(html.contains("redriven 2025-01-01T11:00:00Z"));
        assert!(html.contains("<pre>{&quot;order_id&quot;:&quot;o-1&quot;}</pre>"));
        assert!(html.contains("class=\"current\" aria-current=\"page\">Dead letters</a>"));
    }

    #[test]
    fn says_when_there_are_none() {
        let html = dead_letters_page(&[]);
        assert_well_formed(&html);
        assert!(html.contains("No dead letters."));
    }
}
