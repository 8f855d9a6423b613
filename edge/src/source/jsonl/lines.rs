//! Splitting bytes into lines: a sans-IO core fed chunks of any size (a file read, a pipe read,
//! a test's slices). It keeps at most `line_bytes_max` bytes of an unfinished line; a longer line
//! is reported once as [`Piece::TooLong`] and its remaining bytes are skipped up to its newline
//! without being kept. It tracks the input offset, so the shell can checkpoint the start of the
//! first line not yet handled.
//!
//! It does not decode UTF-8, parse JSON or trim whitespace: that is `parse.rs`.

use std::fmt;

/// Where a line starts in its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineAt {
    /// The 1-based line number, unknown when reading began in the middle of the input
    /// (`start_at = "end"`).
    pub(crate) number: Option<u64>,
    /// The byte offset of the line's first byte.
    pub(crate) offset: u64,
}

impl LineAt {
    /// The first line of an input.
    pub(crate) const START: LineAt = LineAt {
        number: Some(1),
        offset: 0,
    };
}

impl fmt::Display for LineAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.number {
            Some(number) => write!(f, "line {number}"),
            None => write!(f, "the line at byte {}", self.offset),
        }
    }
}

/// What the splitter found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// A complete line, without its newline.
    Line {
        /// Where it starts.
        at: LineAt,
        /// Its bytes (at most `line_bytes_max`).
        bytes: Vec<u8>,
    },
    /// A line longer than `line_bytes_max`; its bytes are skipped up to its newline.
    TooLong {
        /// Where it starts.
        at: LineAt,
    },
}

/// Splits a byte stream into lines of at most `line_bytes_max` bytes (newline excluded).
#[derive(Debug)]
pub(crate) struct LineSplitter {
    line_bytes_max: usize,
    /// The unfinished line's bytes so far; never longer than `line_bytes_max`.
    partial: Vec<u8>,
    /// The current line was reported too long: drop bytes up to its newline.
    skipping: bool,
    /// The input offset of the next byte fed.
    offset: u64,
    /// Where the current (unfinished) line starts.
    line: LineAt,
}

impl LineSplitter {
    /// A splitter at the start of an input.
    pub(crate) fn new(line_bytes_max: usize) -> Self {
        Self {
            line_bytes_max,
            partial: Vec::new(),
            skipping: false,
            offset: 0,
            line: LineAt::START,
        }
    }

    /// Continues at `at` of a (possibly different) input, forgetting any unfinished line.
    pub(crate) fn restart(&mut self, at: LineAt) {
        self.partial = Vec::new();
        self.skipping = false;
        self.offset = at.offset;
        self.line = at;
    }

    /// The input offset of the next byte to feed.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// The start of the first line not yet returned: where reading resumes without losing or
    /// repeating a line.
    pub(crate) fn line_start(&self) -> LineAt {
        self.line
    }

    /// Consumes a prefix of `chunk` (up to and including its first newline, or all of it) and
    /// returns the prefix's length and the piece it completed, if any. Call again with the rest
    /// until the chunk is used up.
    pub(crate) fn split(&mut self, chunk: &[u8]) -> (usize, Option<Piece>) {
        let newline = chunk.iter().position(|&b| b == b'\n');
        let body_len = newline.unwrap_or(chunk.len());
        let used = newline.map_or(chunk.len(), |idx| idx + 1);
        let mut piece = None;
        if !self.skipping {
            if self.partial.len() + body_len > self.line_bytes_max {
                self.partial = Vec::new();
                self.skipping = true;
                piece = Some(Piece::TooLong { at: self.line });
            } else if newline.is_some() {
                let mut bytes = std::mem::take(&mut self.partial);
                bytes.extend_from_slice(&chunk[..body_len]);
                piece = Some(Piece::Line {
                    at: self.line,
                    bytes,
                });
            } else {
                self.partial.extend_from_slice(chunk);
            }
        }
        self.offset += used as u64;
        if newline.is_some() {
            self.next_line();
        }
        (used, piece)
    }

    /// The input ended (end of stdin, or a rotated file read to its end): returns the last line
    /// if it had no newline, and starts a new line at the current offset.
    pub(crate) fn finish(&mut self) -> Option<Piece> {
        let piece = (!self.skipping && !self.partial.is_empty()).then(|| Piece::Line {
            at: self.line,
            bytes: std::mem::take(&mut self.partial),
        });
        if self.line.offset != self.offset {
            self.next_line();
        }
        piece
    }

    fn next_line(&mut self) {
        self.partial = Vec::new();
        self.skipping = false;
        self.line = LineAt {
            number: self.line.number.map(|n| n + 1),
            offset: self.offset,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a piece looks like in a test: `"3@12:text"` for line 3 at byte 12, `"3@12:too long"`.
    fn show(piece: Piece) -> String {
        let at = |at: LineAt| format!("{}@{}", at.number.unwrap_or(0), at.offset);
        match piece {
            Piece::Line { at: a, bytes } => {
                format!("{}:{}", at(a), String::from_utf8_lossy(&bytes))
            }
            Piece::TooLong { at: a } => format!("{}:too long", at(a)),
        }
    }

    /// Feeds `chunks` to a splitter of `line_bytes_max`, then finishes the input; compares
    /// every piece, and the offset reached, with the expectation.
    fn check(line_bytes_max: usize, chunks: &[&str], expected: &[&str]) {
        let mut splitter = LineSplitter::new(line_bytes_max);
        let mut found = Vec::new();
        for chunk in chunks {
            let mut rest = chunk.as_bytes();
            while !rest.is_empty() {
                let (used, piece) = splitter.split(rest);
                assert!(used > 0 && used <= rest.len());
                rest = &rest[used..];
                found.extend(piece.map(show));
            }
        }
        found.extend(splitter.finish().map(show));
        assert_eq!(found, expected);
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        assert_eq!(splitter.offset(), total as u64);
        assert_eq!(splitter.line_start().offset, total as u64);
    }

    // Whole lines in one chunk come out with their numbers and offsets.
    #[test]
    fn whole_lines() {
        check(8, &["ab\ncd\n"], &["1@0:ab", "2@3:cd"]);
    }

    // A line split over several chunks is joined.
    #[test]
    fn line_across_chunks() {
        check(8, &["a", "b", "c\nd", "e\n"], &["1@0:abc", "2@4:de"]);
    }

    // Empty lines are lines (the parser skips them).
    #[test]
    fn empty_lines() {
        check(8, &["\n\nx\n"], &["1@0:", "2@1:", "3@2:x"]);
    }

    // A line of exactly line_bytes_max passes; one byte more is too long.
    #[test]
    fn limit_is_inclusive() {
        check(
            3,
            &["abc\nabcd\nz\n"],
            &["1@0:abc", "2@4:too long", "3@9:z"],
        );
    }

    // A too long line is reported once, as soon as it exceeds the limit, and skipped to its
    // newline across chunks without keeping its bytes.
    #[test]
    fn too_long_across_chunks() {
        check(
            4,
            &["ok\nabc", "def", "ghi", "jk\nnext\n"],
            &["1@0:ok", "2@3:too long", "3@15:next"],
        );
    }

    // The unfinished last line comes out at the end of the input.
    #[test]
    fn last_line_without_newline() {
        check(8, &["a\nbc"], &["1@0:a", "2@2:bc"]);
    }

    // A too long unfinished last line is not returned again at the end.
    #[test]
    fn too_long_last_line() {
        check(2, &["a\nbcd"], &["1@0:a", "2@2:too long"]);
    }

    // Until its newline arrives, a partial line is not returned and the resume point stays at
    // its start.
    #[test]
    fn partial_line_keeps_the_resume_point() {
        let mut splitter = LineSplitter::new(16);
        assert_eq!(
            splitter.split(b"a\nbc").1.map(show).as_deref(),
            Some("1@0:a")
        );
        assert_eq!(splitter.split(b"bc"), (2, None));
        assert_eq!(
            splitter.line_start(),
            LineAt {
                number: Some(2),
                offset: 2
            }
        );
        assert_eq!(splitter.offset(), 4);
    }

    // Restarting forgets the partial line and counts from the given place; an unknown line
    // number stays unknown.
    #[test]
    fn restart_forgets_the_partial_line() {
        let mut splitter = LineSplitter::new(16);
        splitter.split(b"abc");
        splitter.restart(LineAt {
            number: None,
            offset: 100,
        });
        let (_, piece) = splitter.split(b"x\n");
        assert_eq!(
            piece,
            Some(Piece::Line {
                at: LineAt {
                    number: None,
                    offset: 100
                },
                bytes: b"x".to_vec()
            })
        );
        assert_eq!(
            splitter.line_start(),
            LineAt {
                number: None,
                offset: 102
            }
        );
    }
}
