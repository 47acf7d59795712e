"""Controlled text generation (the paper's third experiment), rebuilt offline: a corpus of rated movie-review
sentences, a sentence encoder, and a codec between text and the fixed-size vectors where the flow acts."""
