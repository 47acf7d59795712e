"""Controlled text generation (the paper's third experiment), rebuilt offline: a corpus of rated movie-review
sentences, an annotator, a judge and RLHF on a small language model. The codec between text and the fixed-size
vectors where the flow acts is the library's (:mod:`pfm.text`)."""
