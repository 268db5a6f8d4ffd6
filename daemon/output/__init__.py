"""Output: transcript formats (text, json, srt, vtt) and live JSONL transcripts."""
