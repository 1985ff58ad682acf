# Writes corpus.txt, the small text corpus of tests/bpe_trainer_test.cpp (seeded: the same bytes every run).
# Mixed scripts, digits, punctuation, CRLF and blank lines, so that every branch of the split regexes is used.
import random

rng = random.Random(11)
words = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no more what can out said about "
         "lower lowest newer newest wider low new wide tokenizer token merge pair count byte level").split()
extra = ["café", "naïve", "Straße", "日本語", "東京", "привет", "мир", "😀", "👍🏽", "Ελληνικά", "x²", "½", "don't",
         "it's", "we'll", "I'M", "you've", "they'd", "<tag>", "a\tb", "3.14159", "2026", "1,000,000", "--", "...", "!!"]
lines = []
for i in range(900):
    n = rng.randint(0, 14)
    parts = [rng.choice(words) if rng.random() < 0.85 else rng.choice(extra) for _ in range(n)]
    line = " ".join(parts)
    if rng.random() < 0.3:
        line = line.capitalize() + rng.choice([".", "!", "?", ",", ":", ";"])
    if rng.random() < 0.05:
        line = "  " + line + "   "
    lines.append(line + ("\r\n" if rng.random() < 0.1 else "\n"))
with open("corpus.txt", "w", encoding="utf-8", newline="") as f:
    f.write("".join(lines))
