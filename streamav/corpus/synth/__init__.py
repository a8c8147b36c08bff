"""The synthetic audiovisual emotional-speech corpus (`streamav corpus synth`).

Speakers with distinct identities (photographic faces animated by landmark-driven warps, and
procedurally drawn faces) say sentences with espeak-ng voices in the 8 MEAD emotions at 3
intensities; the lips follow the speech, the head, blinks and gaze move on their own, and every
factor is written out as ground truth. See docs/corpus.md. Entry point:
`streamav.corpus.synth.generate.synthesize_corpus`.
"""
