"""Text as vectors, for ``pfm fit/apply --codec``: a sentence encoder (:mod:`pfm.text.encoder`, fetched once with
:mod:`pfm.text.fetch`), a small language model that decodes vectors back to text (:mod:`pfm.text.lm`), and the codec
between the two (:mod:`pfm.text.codec`)."""
