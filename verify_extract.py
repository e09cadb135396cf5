"""Where a response states its final answer: the first of verify.py's steps, kept apart so that
verify.py stays under 1,000 lines. Standard library only, no `re`: strings are scanned by hand.

A box is the mark the training prompt asks for, so the last box wins; then a `####` line, then
"the answer is" or "Final Answer:". An unmarked response (evaluation only) gives the last value of
its last clause: a `$...$` span or a number, whichever comes last.
"""

PHRASES = ("final answer is", "final answer:", "the answer is", "answer:")
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
END_OF_TURN = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>")  # chat templates
SIGN_OFF = "i hope it is correct"  # the closing line of the MATH and Minerva prompt formats
MATH = (("$$", "$$"), ("\\[", "\\]"), ("$", "$"), ("\\(", "\\)"))  # openers and closers of math
CLAUSE_ENDS = (". ", ".\n", "\n", ";", "? ", "! ")
MAX_BOXES = 64  # boxes joined into one list


def match_brace(s, i):
    """Index of the '}' closing the '{' at s[i], or -1. Escaped braces (\\{ \\}) do not count."""
    depth = 0
    while i < len(s):
        depth += (s[i] == "{") - (s[i] == "}")
        if depth == 0:
            return i
        i += 2 if s[i] == "\\" else 1
    return -1


def boxed_answer(text):
    """Content of the last box, with boxes just before it that only a connector separates
    joined by commas (`\\boxed{2} and \\boxed{3}` gives `2, 3`). None when there is no box,
    '' when the last box is empty or unclosed."""
    found, end = [], len(text)
    while len(found) < MAX_BOXES:
        start = max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))
        if start < 0:
            break
        i = start + (6 if text.startswith("\\boxed", start) else 5)
        i += len(text[i:i + 100]) - len(text[i:i + 100].lstrip(" "))
        if text.startswith("{", i):
            stop = match_brace(text, i) + 1  # 0 when the box is unclosed
            content = text[i + 1:stop - 1] if stop else None
        else:
            stop = i
            while stop < len(text) and text[stop] not in " \n$":  # the short form: \boxed 5
                stop += 1
            content = text[i:stop]
        if not found and content is None:
            return ""
        gap = text[stop:end]  # between two boxes: must only join them, as `$ and $` does
        for word in ("\\text", "\\quad", "and", "or", "$", ",", ";", "{", "}", "\\(", "\\)"):
            gap = gap.replace(word, "")
        if found and (content is None or not content.strip() or stop > end
                      or len(text[stop:end]) > 40 or gap.strip()):
            break
        found.append(content)
        end = start
    return ", ".join(reversed(found)) if found else None


def phrase_start(text, phrases=PHRASES):
    """Index just after the last of the phrases (any case), or -1."""
    low = text.translate(ASCII_LOWER)  # same length as text, unlike str.lower on all of Unicode
    return max(low.rfind(p) + len(p) if low.rfind(p) >= 0 else -1 for p in phrases)


def phrase_answer(text):
    """What follows the last "the answer is" or "Final Answer:" (any case): display math right
    after it, else its sentence; when that sentence is prose, the value it opens with, else the
    last value after its last 'is' ("The volume of $V$ is 120"). None when no phrase occurs."""
    start = phrase_start(text)
    if start < 0:
        return None
    rest = text[start:].lstrip(" :*\n\"'")
    for opener, closer in MATH[:2]:  # display math holds the whole answer, line breaks and all
        if rest.startswith(opener) and rest.find(closer, len(opener)) > 0:
            return rest[len(opener):rest.find(closer, len(opener))]
    sentence = rest.split("\n")[0].split(". ")[0].split(".\t")[0].strip(" \"'")
    if not is_prose(sentence):
        return sentence
    if sentence.startswith("$"):  # '$12$, which is 3 more than 9': the value it opens with
        return sentence.split("$")[1]
    verb = sentence.rfind(" is ")  # 'The volume of $V$ is 120': the value after its last 'is'
    tail = sentence[verb + 4:] if verb >= 0 else sentence
    return number_in(sentence.split()[0]) or prose_answer(tail)


def is_prose(text):
    """Is a one-line text a sentence rather than an answer? Three words of three letters or more,
    or math with a word outside it ('Answer $9$', 'We find that $x \\lt 3$'; 'and' only joins)."""
    pieces = math_pieces(text)
    words = [w.strip(".,;:").replace("'", "") for w in text.split()]
    outside = [w.strip(".,;:!?") for math, piece in pieces if not math for w in piece.split()]
    return sum(len(w) > 2 and w.isalpha() for w in words) >= 3 or any(m for m, _ in pieces) and any(
        len(w) > 2 and w.isalpha() and w not in ("and", "or") for w in outside)


def math_pieces(text):
    """text cut into (is_math, piece): the spans inside $ $, $$ $$, \\( \\) and \\[ \\], and the
    prose between them. An escaped dollar \\$ is prose, and so is an opener never closed."""
    pieces, i, n = [], 0, len(text)
    ahead = dict.fromkeys(("$", "\\(", "\\["), -1)  # where each opener occurs next (n: nowhere)

    def next_opener(k):  # searching again only past the ones behind k keeps the scan linear
        for opener, j in ahead.items():
            if j < k:
                ahead[opener] = text.find(opener, k) % (n + 1)
        return min(ahead.values())

    while i < n:
        k = next_opener(i)
        while 0 < k < n and text[k - 1] == "\\" and text[k] == "$":  # \$ is a dollar sign
            k = next_opener(k + 1)
        opener, closer = next((pair for pair in MATH if text.startswith(pair[0], k)), ("", ""))
        close = text.find(closer, k + len(opener)) if opener else -1
        while close > 0 and closer == "$" and text[close - 1] == "\\":
            close = text.find(closer, close + 1)
        if close < 0:  # no math from here on
            pieces.append((False, text[i:]))
            break
        pieces += [(False, text[i:k]), (True, text[k + len(opener):close])]
        i = close + len(closer)
    return [(math, piece) for math, piece in pieces if piece]


def prose_answer(text):
    """The answer of an unmarked response: in its last clause (after the last '. ', ';', '?', '!'
    or line break outside math), the last math span or number, whichever comes last. A number
    may carry a unit or a currency ('1,000.99m²', '5€'), a percent sign or a slash ('2/3');
    '1,250' reads 1250; in '12 cm^2' the 2 is no candidate. A closing "I hope it is correct." is
    not a clause."""
    text = text.strip().rstrip(".").strip()
    if text.translate(ASCII_LOWER).endswith(SIGN_OFF):
        text = text[:-len(SIGN_OFF)].strip().rstrip(".").strip()
    clause = []
    for math, piece in reversed(math_pieces(text)):
        ends = [piece.rfind(e) + len(e) for e in CLAUSE_ENDS if e in piece and not math]
        cut = max(ends, default=-1)
        clause.append((math, piece[max(cut, 0):]))
        if cut >= 0:
            break
    candidates = []
    for math, piece in reversed(clause):
        candidates += [piece] if math else [n for n in map(number_in, piece.split()) if n]
    return candidates[-1] if candidates else None


def number_in(word):
    """The number a word of prose states ('1,250.' '100%' '2/3' '$5' '1,000.99m²'), or None: a
    single letter after it makes an expression (2x), not a unit."""
    word = word.replace("\\$", "").strip(".,:!?()\"'*").lstrip("$\u20ac\u00a3")
    k = 1 if word.startswith("-") else 0
    while k < len(word) and (word[k].isdigit() or word[k] in ",./"):
        k += 1
    number, unit = word[:k].rstrip(",./"), word[k:]
    if not any(c.isdigit() for c in number) or number.count("/") > 1:
        return None
    if unit and unit not in "%\u00b0$\u20ac\u00a3" and not (len(unit) > 1 and all(
            c.isalpha() or c in "\u00b2\u00b3" for c in unit)):
        return None
    return (without_thousands(number) or number) + ("%" if unit == "%" else "")


def without_thousands(s):
    """'10,080', '-1,000,000.5' or '1 000' without their separators; None if s is not written so.
    A comma and a space separate items ('32, 349' is two numbers)."""
    body = s.strip()
    sign = "-" if body.startswith("-") else ""
    groups = body.lstrip("-").split("," if "," in body else " ")
    groups[-1], _, decimals = groups[-1].partition(".")
    if (len(groups) < 2 or not 1 <= len(groups[0]) <= 3 or any(len(g) != 3 for g in groups[1:])
            or not all(g.isdigit() for g in groups) or (decimals and not decimals.isdigit())):
        return None
    return sign + "".join(groups) + ("." + decimals if decimals else "")


def clean(answer):
    """Strip math delimiters ($, \\( \\), \\[ \\]), markdown bold and trailing punctuation."""
    s = trim(trim(answer).strip("*"))
    for opener, closer in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(opener) and s.endswith(closer):
            s = s[len(opener):-len(closer)]
    s = "".join(c for k, c in enumerate(s) if c != "$" or (k > 0 and s[k - 1] == "\\"))
    return trim(s) or None


def trim(s):
    """s without trailing punctuation; an ellipsis stays ('1, 2, 3, ...' does not end at 3)."""
    s = s.strip()
    return s.rstrip(",;:" if s.endswith("...") else ".,;:").strip()
