r"""Labelled cases for the conventions graders rely on (issue 13), written before the code changed.

Each case is (convention, response, gold, expected, marked). `expected` is the mathematical truth
for a reader who takes the answer from prose; `marked` says whether the response marks its answer
(a box, a bare answer, a `$...$` answer, "the answer is"). The strict mode, `grade(r, g)`, should
accept a case only when it is expected and marked; the evaluation mode, `grade(r, g, fallback=True)`,
whenever it is expected. Negatives are things no grader should accept. Written by hand for this
project, not taken from any data set.
"""

CASES = [
    # --- an answer in prose, nothing marks it ------------------------------------------------
    ("prose", "She starts with 30 apples and buys 12 more, so in total she has 42 apples.", "42",
     True, False),
    ("prose", "She starts with 30 apples and buys 12 more, so in total she has 42 apples.", "30",
     False, False),
    ("prose", "Each box holds 6 eggs and there are 7 boxes. That makes 42 eggs in all.", "42",
     True, False),
    ("prose", "The train covers 120 km in 2 hours, so its speed is 60 km/h.", "60", True, False),
    ("prose", "The train covers 120 km in 2 hours, so its speed is 60 km/h.", "2", False, False),
    ("prose", "The area of the square is 12 cm^2.", "12", True, False),
    ("prose", "Adding the two parts gives a total of $\\frac{7}{12}$ of the cake.",
     "\\frac{7}{12}", True, False),
    ("prose", "Adding the two parts gives a total of $\\frac{7}{12}$ of the cake.", "12", False,
     False),
    ("prose", "Therefore the probability is $\\frac{3}{8}$.", "\\frac{3}{8}", True, False),
    ("prose", "Therefore the probability is $\\frac{3}{8}$.", "8", False, False),
    ("prose", "So $x = 5$ satisfies both equations.", "5", True, False),
    ("prose", "We tried 3, 4 and 5; none works.", "5", False, False),
    # --- a bare answer in $...$ or \(...\) without a box -------------------------------------
    ("delimited", "$\\frac{1}{2}$", "0.5", True, True),
    ("delimited", "\\(\\sqrt{2}\\)", "\\sqrt{2}", True, True),
    ("delimited", "$$\n\\frac{3}{4}\n$$", "\\frac{3}{4}", True, True),
    ("delimited", "\\[\n(1, 2)\n\\]", "(1,2)", True, True),
    ("delimited", "\\[\n(1, 2)\n\\]", "(2,1)", False, True),
    ("delimited", "$x = -3$", "-3", True, True),
    ("delimited", "$2\\pi$", "\\pi", False, True),
    # --- approximations ------------------------------------------------------------------------
    ("approx", "\\boxed{t \\approx 3.7}", "3.7", True, True),
    ("approx", "\\boxed{\\approx 3.7}", "3.7", True, True),
    ("approx", "\\boxed{t \\approx 3.8}", "3.7", False, True),
    ("approx", "\\boxed{3.6667}", "3.67", True, True),
    ("approx", "\\boxed{\\frac{11}{3}}", "3.67", True, True),
    ("approx", "\\boxed{3.6}", "3.67", False, True),
    ("approx", "\\boxed{3.66}", "3.67", False, True),
    ("approx", "\\boxed{2\\sqrt{2}}", "2.83", True, True),
    ("approx", "\\boxed{2.8}", "2.83", False, True),
    ("approx", "\\boxed{0.5}", "\\frac{1}{3}", False, True),
    ("approx", "The time is approximately 3.7 seconds.", "3.7", True, False),
    # --- a gold that names its answer, and the reverse ----------------------------------------
    ("named", "\\boxed{(1, 5)}", "(a,b)=(1,5)", True, True),
    ("named", "\\boxed{(5, 1)}", "(a,b)=(1,5)", False, True),
    ("named", "\\boxed{a=1, b=5}", "(a,b)=(1,5)", True, True),
    ("named", "\\boxed{a=5, b=1}", "(a,b)=(1,5)", False, True),
    ("named", "\\boxed{6, 2}", "PQ=6, RS=2", True, True),
    ("named", "\\boxed{2, 6}", "PQ=6, RS=2", False, True),
    ("named", "\\boxed{PQ = 6, RS = 2}", "6, 2", True, True),
    ("named", "\\boxed{1:4}", "S_1:S_2=1:4", True, True),
    ("named", "\\boxed{4:1}", "S_1:S_2=1:4", False, True),
    ("named", "\\boxed{\\frac{1}{4}}", "S_1:S_2=1:4", True, True),
    ("named", "\\boxed{S_1 : S_2 = 1 : 4}", "1:4", True, True),
    ("named", "\\boxed{xy = 6}", "6", False, True),
    # --- tuples, intervals, inequalities and matrices in other spellings ------------------------
    ("spelling", "\\boxed{\\langle 1, 2, 3 \\rangle}", "(1,2,3)", True, True),
    ("spelling", "\\boxed{\\langle 1, 2, 3 \\rangle}", "(3,2,1)", False, True),
    ("spelling", "\\boxed{1 < x < 2}", "(1,2)", True, True),
    ("spelling", "\\boxed{1 \\le x < 2}", "(1,2)", False, True),
    ("spelling", "\\boxed{x \\in [1, 2)}", "1 \\le x < 2", True, True),
    ("spelling", "\\boxed{x \\ge 3}", "[3, \\infty)", True, True),
    ("spelling", "\\boxed{x > 3}", "[3, \\infty)", False, True),
    ("spelling", "\\boxed{\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}}",
     "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", True, True),
    ("spelling", "\\boxed{\\begin{bmatrix} 1 & 3 \\\\ 2 & 4 \\end{bmatrix}}",
     "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", False, True),
    ("spelling", "\\boxed{(-\\infty, -1) \\cup (1, \\infty)}", "x < -1 \\text{ or } x > 1", True,
     True),
    # --- thousands separators and units inside prose -----------------------------------------
    ("prose-units", "In all the school raised \\$1,250 for the trip.", "1250", True, False),
    ("prose-units", "In all the school raised \\$1,250 for the trip.", "250", False, False),
    ("prose-units", "The answer is 1,250 dollars.", "1250", True, True),
    ("prose-units", "The answer is 12,5 km.", "125", False, True),
    ("prose-units", "The tank holds 2,000 liters when full.", "2000", True, False),
    ("prose-units", "So the garden is 15 m^2 in area.", "15", True, False),
    ("prose-units", "So the garden is 15 m^2 in area.", "2", False, False),
]
