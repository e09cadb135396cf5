r"""Labelled cases for the conventions graders rely on, written before the code changed.

Each case is (convention, response, gold, expected, marked). `expected` is the mathematical truth
for a reader who takes the answer from prose; `marked` says whether the response marks its answer
(a box, a bare answer, a `$...$` answer, "the answer is"). The strict mode, `grade(r, g)`, should
accept a case only when it is expected and marked; the evaluation mode, `grade(r, g, fallback=True)`,
whenever it is expected. Negatives are things no grader should accept. `CASES` are written by
hand for this project, not taken from any data set. `MATH_VERIFY_CASES` are read from Math-Verify's
test suite, in the same form; `DISAGREEMENTS` lists where this project's verdict differs from
Math-Verify's, with the reason, and `GAPS` the cases this checker still misses.
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
    ("approx", "\\boxed{0.54}", "0.5", False, True),
    ("approx", "\\boxed{\\frac{1}{3}}", "0.3", False, True),
    ("approx", "\\boxed{\\pi}", "3.14", True, True),
    ("approx", "$t \\approx 3.7$", "3.7", True, True),
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
    ("named", "\\boxed{PQ = 6}", "6", True, True),
    ("named", "\\boxed{x = 1, y = 2}", "(x,y)=(2,1)", False, True),
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
    ("spelling", "\\boxed{(-\\infty, -1) \\cup (1, \\infty)}", "x < -1 \\text{ or } x > 2", False,
     True),
    # --- thousands separators and units inside prose -----------------------------------------
    ("prose-units", "In all the school raised \\$1,250 for the trip.", "1250", True, False),
    ("prose-units", "In all the school raised \\$1,250 for the trip.", "250", False, False),
    ("prose-units", "The answer is 1,250 dollars.", "1250", True, True),
    ("prose-units", "The answer is 12,5 km.", "125", False, True),
    ("prose-units", "The tank holds 2,000 liters when full.", "2000", True, False),
    ("prose-units", "So the garden is 15 m^2 in area.", "15", True, False),
    ("prose-units", "So the garden is 15 m^2 in area.", "2", False, False),
    ("prose-units", "The side is 3 m, so the area is 3^2 = 9 square meters.", "9", True, False),
    ("prose-units", "The side is 3 m, so the area is 3^2 = 9 square meters.", "3", False, False),
]

# --- Math-Verify's test suite, read case by case ----------------------------------------------
# Each case of Math-Verify 0.9's tests (huggingface/Math-Verify, tests/, MIT licence) that grades
# an answer, as (convention, response, gold, expected, marked) like the cases above. The gold is
# the bare answer of Math-Verify's gold (its `$...$` taken off; a gold written as a whole solution
# gives its boxed answer). Long responses are cut to their last sentences, which hold the answer;
# a few raw strings whose backslashes were doubled by mistake are written single, as meant.
# `expected` is this project's verdict: where it differs from Math-Verify's, DISAGREEMENTS says
# why. `marked` is whether the strict mode reads the answer: a box (the last box wins there, since
# the training prompt asks for one), a `####`, "the answer is" / "Final Answer:", or a bare answer.
# Left out: cases that test Math-Verify's API (timeouts, the parsed values and fallback strings of
# `parse`, failed spans kept as text) rather than a verdict, and one whose string a stray escape
# broke (`"\frac"` read as a form feed).
MATH_VERIFY_CASES = [
    # numbers: separators, signs, currency and units around them
    ("numbers", "-5", "-5", True, True),
    ("numbers", "7,425,000", "7425000", True, True),
    ("numbers", "1 000", "1000", True, True),
    ("numbers", "1000.0", "1000", True, True),
    ("numbers", "1,000.0", "1000.0", True, True),
    ("numbers", "1000,99", "1000.99", False, True),
    ("numbers", "1.22", "1,22", False, True),
    ("numbers", "Soucis : 2,74 $ a..", "2.74", False, False),
    ("numbers", ".4", "0.4", True, True),
    ("numbers", "1,000.99", "1000.99", True, True),
    ("numbers", "$1,000.99", "1000.99", True, True),
    ("numbers", "1,000.99$", "1000.99", True, True),
    ("numbers", "the number is not 10 which is 1,000.99\u20ac", "1000.99", True, False),
    ("numbers", "so the number is 10 which is 1,000.99m\u00b2", "1000.99", True, False),
    ("numbers", "not it's not 10 it's 1,000.99m\u00b2", "1000.99", True, False),
    ("numbers", "0.111", "0,111", False, True),
    ("numbers", "AZYUK2A", "2", False, True),
    ("numbers", "0.3333$", r"\frac{1}{3}", False, True),
    ("numbers", r"\frac{10}{9}", "10/9", True, True),
    ("numbers", r"-\frac{10}{9}", "-10/9", True, True),
    ("numbers", "$0.0833333333333333$", r"\frac{1}{12}", True, True),
    ("numbers", r"$\sqrt{17}$", "4.123105625617661", True, True),
    ("numbers", r"$4\sqrt{2}$", "4", False, True),
    ("numbers", "$13$", r"\text{13}", True, True),
    ("numbers", "$12:00$", "12:00", True, True),
    ("numbers", "$1:00$", "12:00", False, True),
    # mixed numbers: a whole number, a space, a proper fraction
    ("mixed", "The answer is 4 4/9.", "40/9", True, True),
    ("mixed", "11 5/6", "71/6", True, True),
    ("mixed", "+11 5/6", "71/6", True, True),
    ("mixed", "-4 4/9", "-40/9", True, True),
    ("mixed", "The answer is 4 4/9.", "4", False, True),
    ("mixed", "4 0/9", "4", True, True),
    ("mixed", "4 4/0", "4", False, True),
    ("mixed", "11 7/6", "73/6", False, True),
    ("mixed", "11 7/6", "11", False, True),
    ("mixed", "11 6/6", "11", False, True),
    ("mixed", "11 6/6", "12", False, True),
    ("mixed", "4 0/0", "4", False, True),
    ("mixed", "1 000 4/9", "9004/9", True, True),
    ("mixed", "11/10 4/9", "139/90", False, True),
    ("mixed", "11.0 4/9", "103/9", False, True),
    ("mixed", "(11) 4/9", "103/9", False, True),
    ("mixed", "11 - 4/9", "11 + 4/9", False, True),
    ("mixed", "4 + 4/9", "40/9", True, True),
    ("mixed", "4 4/9%", "40/900", True, True),
    ("mixed", "4 4/9%", "40/9", True, True),
    ("mixed", "4 4/9 2", "2", False, True),
    ("mixed", "11\n5/6", "71/6", False, False),
    ("mixed", "$5.00", "5", True, True),
    ("mixed", "28%", "7/25", True, True),
    ("mixed", "There are 4 objects and 4/9 remain.", "4/9", True, False),
    # intervals and sets
    ("sets", "$[0,1)$", "[0,1)", True, True),
    ("sets", "$[0,1)$", "[0,9)", False, True),
    ("sets", "$[0,9)$", "(0,9)", False, True),
    ("sets", "$-[0,1)$", "1", False, True),
    ("sets", "${1,3}$", "(3,1)", False, True),
    ("sets", "${1,3}$", "(1,3)", False, True),
    ("sets", r"$x \in [-2,7]$", r"-2 \le x \le 7", True, True),
    ("sets", r"$-2 \le x \le 7$", r"x \in [-2,7]", True, True),
    ("sets", r"$x \in [-2,7]$", "[-2, 7]", True, True),
    ("sets", r"The solution set is $\boxed{[-1, -\tfrac12) \cup (-\tfrac12, 0) \cup (0, 1) \cup "
     r"(1, \infty)}.$", r"[-1, -\frac{1}{2}) \cup (-\frac{1}{2}, 0) \cup (0, 1) \cup (1, \infty)",
     True, True),
    ("sets", r"x \in \boxed{\{-1\} \cup [0,7)}.$", r"\{-1\} \cup [0,7)", True, True),
    ("sets", r"Thus, the answer is $x \in \boxed{(2,12) \cup (12,102)}$", r"(2, 12) \cup (12, 102)",
     True, True),
    ("sets", "${-2021, 2021}$", r"\pm 2021", True, True),
    ("sets", "$2021$", r"\pm 2021", False, True),
    ("sets", "$n=1, 2, 3$", "n=1, 2, 3", True, True),
    ("sets", "$n=1, 2, 3$", "n=2, 3, 4", False, True),
    ("sets", "$D = (0, 1)$", "D = (0, 1)", True, True),
    ("sets", "$D = (0, 1.5)$", "D = (0, 1)", False, True),
    ("sets", r"$19, 46, \text{ and } 82$", "19, 46, and 82", True, True),
    ("sets", "$21, 36, and 82$", "19, 46, and 82", False, True),
    ("sets", "$1, 2, 3, ...$", "1, 2, 3", False, True),
    ("sets", r"$\boxed{1}\boxed{2}$", "1,2", True, True),
    # where the answer sits: delimiters, phrases, several boxes, text after the answer
    ("where", r"Answer \[ 9 \]", "9", True, False),
    ("where", "Answer $ 9 $", "9", True, False),
    ("where", "Answer $$ 9 $$", "9", True, False),
    ("where", r"Answer \( 9 \)", "9", True, False),
    ("where", r"Answer \( (9+1) \)", "10", True, False),
    ("where", "Answer $ \n 9 \n $", "9", True, False),
    ("where", "Answer \\( \n 9 \n \\)", "9", True, False),
    ("where", "Answer \\[ \n 9 \n \\]", "9", True, False),
    ("where", "Answer $$ \n 9 \n $$", "9", True, False),
    ("where", r"Answer $ \frac{1}{2} \$ = \frac{10}{9} $", "10/9", False, False),
    ("where", r"Since $x<2$, it follows that $|x-2|=2-x$. If $2-x=p$, then $x=2-p$. Thus "
     r"$x-p=\boxed{2-2p}$.", "2-2p", True, True),
    ("where", r"...Therefore, the probability that Alice wins the game is 2/3. <|im_start|>user",
     "2/3", True, False),
    ("where", "...Therefore, there are 12 distinct arithmetic sequences that meet the three given "
     "conditions. I hope it is correct. <|im_start|>user", "12", True, False),
    ("where", r"...So, the ordered pair $(x, y)$ that solves the system is $(7, 6)$. "
     "<|im_start|>user", "(7,6)", True, False),
    ("where", r"...the domain of $q(x)$ is the interval $(0, 1)$, since $x$ must be greater than or "
     r"equal to 0 and less than 1, but not equal to 1. Final Answer: The final answer is $(0, 1)$. "
     "I hope it is correct. <|im_start|>user", "[0,1)", False, True),
    ("where", r"...which is $\boxed{[-3, 2]}$. I apologize for the mistake. ... the domain of the "
     r"function is the interval outside the roots, which is $\boxed{(-\infty, -3] \cup [2, \infty)}$."
     r" Final Answer: The final answer is $(-\infty, -3] \cup [2, \infty)$. I hope it is correct. "
     "<|im_start|>user", "[-3,2]", False, True),
    ("where", r"Rounded to the nearest cent, Paula's investment is worth $\boxed{\$16,\!386.20}$ at "
     r"the end of the 5-year period. The answer is $16,\!386.20$. I apologize for the repetition in "
     "my previous responses.", "16386.20", True, True),
    ("where", r"Therefore, the volume of rectangular prism $ABCDEFGH$ is $5 \times 6 \times 4 = 120$."
     " Final Answer: The volume of $ABCDEFGH$ is 120. I hope it is correct.", "120", True, True),
    ("where", r"$85 + (-67) + 12,\!000,\!003 + (-3) = 12,\!000,\!023$. Final Answer: The final "
     "answer is 12,000,023. I hope it is correct. <|im_start|>user", "12000023", True, True),
    ("where", r"Therefore, the smallest possible value for $N$ is $14{,}922$. Final Answer: The "
     r"smallest possible value of $N$ is $\boxed{14{,}916}$. I hope it is correct. <|im_start|>user",
     "14916", True, True),
    ("where", r"Thus, $(p,q) = \boxed{\left( \frac{1}{5}, \frac{1}{6} \right)}.$ Final Answer: The "
     r"final answer is $\left( \frac{1}{5}, \frac{1}{6} \right)$. I hope it is correct.",
     r"\left(\frac{1}{5},\frac{1}{6}\right)", True, True),
    ("where", r"Thus, $(t,u) = \boxed{\left( \frac{4}{5}, \frac{1}{5} \right)}.$ Final Answer: The "
     r"final answer is $\left( \frac{4}{5}, \frac{1}{5} \right)$. I hope it is correct.",
     r"\left(\frac{4}{5},\frac{1}{5}\right)", True, True),
    ("where", r"&= \frac{10\sqrt{10.5}}{27}. \end{align*} Final Answer: The final answer is "
     r"$\frac{10\sqrt{10.5}}{27}$. I hope it is correct.", r"\frac{5\sqrt{42}}{27}", True, True),
    ("where", r"Rounded to the nearest cent, Paula's investment is worth $\boxed{\$16386.17}$ after 5 "
     "years. I hope it is correct. <|im_start|>user", "16386.17", True, True),
    ("where", r"=\frac{1 }{5 }=\boxed{20 \%}. $$ Final Answer: The final answer is $20 \%$. I hope "
     "it is correct. Note: The solution provided assumes that the total number of people is the sum"
     " of adults and children.", "20", True, True),
    ("where", r"Since Rod started 5 hours before Sphere, the number of hours ago Jane started "
     r"growing Rod is $t = s + 5 = 3 + 5 = 8$ hours. Final Answer: Jane started growing Sphere 3 "
     "hours ago. I hope it is correct. <|im_start|>user", "3", True, True),
    ("where", r"So, the total number of points in the domain is $1 + 2 \times 9 = 1 + 18 = 19$ "
     r"points. Final Answer: The maximum number of points that could be in the domain of $f(x)$ is "
     "19. <|im_start|>user", "19", True, True),
    ("where", r"Therefore, the point where the line intersects $\overline{CD}$ is $\boxed{(0, 0)}$. "
     "Final Answer: The final answer is $(0, 0)$. I hope it is correct. <|im_start|>user",
     r"(\tfrac{27}{8},\tfrac{15}{8})", False, True),
    ("where", "Final Answer: The largest $n$ is 34.", "34", True, True),
    ("where", "Final Answer: The final answer is $14 {, }916$. I hope it is correct. Note: The "
     "solution provided assumes that $A$ and $B$ are digits that are nonzero.", "14{,}916", True,
     True),
    ("where", "Dividing the second equation by the first equation, we get: $$\\frac{\\Delta x'}"
     "{\\Delta x} \\geq \\frac{2}{1}.$$ Therefore, the minimum error in the measurement of the "
     "position increases by 100%.", "100%", True, False),
    ("where", r"So, Paula's investment is worth approximately $\boxed{16386.16}$ dollars at the end "
     "of the 5 years. Final Answer: The final answer is 16386.16.", "16386.16", True, True),
    ("where", r"\[ \text{Total sum} = 5866608 \] So, the sum of the integers on Camy's list is "
     r"$\boxed{5866608}$. Final Answer: The final answer is 5866608. I hope it is correct.",
     "5866608", True, True),
    ("where", r"So, the total number of distinguishable ways is $1 \times 5! \times 5! = 120 \times"
     r" 120 = \boxed{14400}$. Final Answer: The final answer is 14400. I hope it is correct.",
     "14400", True, True),
    ("where", r"Thus, the smallest possible value of $N$ is $14{,}940$. Final Answer: The final "
     r"answer is $14{,}916$. I hope it is correct.", "14916", True, True),
    ("where", r"$$\frac{|C|}{|A| + |C|} \times 100\% = \frac{1}{5} \times 100\% = \boxed{20\%}$$ "
     r"Final Answer: The final answer is $20\%$. I hope it is correct.", r"20\%", True, True),
    ("where", r"$\frac{70}{9} \approx 7.78$ So, Anna pays approximately $7.78 for her fudge. Final "
     "Answer: The final answer is 7.78.", "7.78", True, True),
    ("where", r"Thus, the new error in the measurement of the position is at least $100\%$ of the "
     r"original error. Final Answer: The final answer is $100$. I hope it is correct.", "100", True,
     True),
    ("where", r"$$-1(x-1)+2(y-1)+1(z-1)=0\Rightarrow\boxed{x-2y+z-1=0}.$$ Final Answer: The final "
     r"answer is $x-2y+z-1=0$. I hope it is correct.", "x-2y+z-1=0", True, True),
    ("where", r"so the interest earned is $0.04 \cdot 10,000 \cdot \frac{1}{2} = \boxed{200}$ ... "
     r"$0.05 \cdot 10,200 \cdot \frac{1}{2} = \boxed{255}$ So, after six months in the second CD, "
     r"Dr. Zaius has $10,200 + $255 = $10,455. Final Answer: The final answer is $10,455$. I hope "
     "it is correct.", "10455", True, False),
    ("where", r"Thus, the values of \( k \) for which the quadratic has real roots are: \[ "
     r"\boxed{[-4, 0]} \]", "[-4,0]", True, True),
    ("where", r"The solution to the inequality is \( x \in (-6, 10) \). Final Answer: The final "
     r"answer is \((-6, 10)\). I hope it is correct.", "(-6, 10)", True, True),
    ("where", r"Reading the remainders from last to first, we find: \[ 1121_{10} = 1112122_3 \] Thus,"
     r" the product \( ab \) expressed in the base-three number system is "
     r"\(\boxed{1112122_3}\).", "1112112_3", False, True),
    ("where", r"<think> So the integers are 1 and -2. **Final Answer** The integers are \boxed{-2} "
     r"and \boxed{1}. </think> Solving this quadratic equation, we find the roots: \[ n = 1 \quad "
     r"\text{and} \quad n = -2. \] Thus, the integers \( n \) such that \( f(n) = n \) are: \[ "
     r"\boxed{-2} \quad \text{and} \quad \boxed{1}. \]", "1,-2", True, True),
    ("where", r"Thus, the area of the trapezoid is \(\boxed{189}\) square centimeters.", "189", True,
     True),
    ("where", r"$\sum_{k=0}^n\bigl(k\bigr)$", "0", False, True),
    ("where", r"$\sum_{k=0}^n\bigl(k\bigr)$ and $42$", "42", False, True),
    # sentence punctuation inside the math
    ("punctuation", r"$\frac{1}{3}.$", r"\frac{1}{3}", True, True),
    ("punctuation", r"The answer is $\frac{1}{3}.$", r"\frac{1}{3}", True, True),
    ("punctuation", r"$$\frac{1}{3}.$$", r"\frac{1}{3}", True, True),
    ("punctuation", r"\[\frac{1}{3}.\]", r"\frac{1}{3}", True, True),
    ("punctuation", r"$\frac{1}{3},$", r"\frac{1}{3}", True, True),
    ("punctuation", r"$\frac{1}{3} .$", r"\frac{1}{3}", True, True),
    ("punctuation", r"$\sqrt{2}.$", r"\sqrt{2}", True, True),
    ("punctuation", "$(1,2).$", "(1,2)", True, True),
    ("punctuation", r"$5 \text{ cm}.$", "5", True, True),
    ("punctuation", "$42.$", "42", True, True),
    ("punctuation", "$2^{10}.$", "2", False, True),
    ("punctuation", "The answer is $1/3.$", "1", False, True),
    # LaTeX spellings
    ("latex", r"$\frac13 $", "1/3", True, True),
    ("latex", r"$\frac3{3} $", "1", True, True),
    ("latex", r"$\sqrt3 $", r"\sqrt{3}", True, True),
    ("latex", r"$\cfrac{1}{3} $", "1/3", True, True),
    ("latex", r"$\dfrac{1}{3} $", "1/3", True, True),
    ("latex", r"$\tfrac{1}{3} $", "1/3", True, True),
    ("latex", "$ 1/3 $", "1/3", True, True),
    ("latex", r"$\left( \frac{1}{3} \right)$", "1/3", True, True),
    ("latex", r"$\boxed{\frac{1}{3}}$", "1/3", True, True),
    ("latex", r"$\frac{1}{3} \text{meters}$", "1/3", True, True),
    ("latex", r"$\frac{1}{3} \textbf{meters}$", "1/3", True, True),
    ("latex", r"$k = \frac{1}{3}$", "1/3", True, True),
    ("latex", r"The answer is $\boxed{\sqrt 2+\sqrt 5}$", r"\sqrt{2}+\sqrt{5}", True, True),
    ("latex", r"Therefore $\boxed{\frac94\pi}$.", r"\frac{9}{4}\pi", True, True),
    ("latex", r"The distance is $\boxed{125\textnormal{ miles}}.$", "125", True, True),
    ("latex", r"$\boxed{\text{(C)}}.$", r"\text{C}", True, True),
    ("latex", "$E$", r"\text{E}", True, True),
    ("latex", r"is $\boxed{11,\! 111,\! 111,\! 100}$", "11111111100", True, True),
    ("latex", r"is $\boxed{32,\! 349}$", "32349", True, True),
    ("latex", r"is $\boxed{32, 349}$", "32349", False, True),
    ("latex", r"$1 - \frac{1}{\mathrm{e}}$", r"1 - \frac{1}{\mathrm{e}}", True, True),
    ("latex", r"$1 + \frac{1}{\mathrm{e}}$", r"1 - \frac{1}{\mathrm{e}}", False, True),
    ("latex", r"$F_n = \sum_{k=0}^{n-2} F_k F_{n-k-2}$", r"F_n = \sum_{k=0}^{n-1} F_k F_{n-k-1}",
     False, True),
    ("latex", r"$F_n = \sum_{k=0}^{n-1} F_{n-k-1} F_k$", r"F_n = \sum_{k=0}^{n-1} F_k F_{n-k-1}",
     True, True),
    # percentages
    ("percent", "28 percent", r"28\%", True, True),
    ("percent", "28 pct", r"28\%", True, True),
    ("percent", "28 %", r"28\%", True, True),
    ("percent", "$28$ %", r"28\%", True, True),
    ("percent", "$28$ percent", r"28\%", True, True),
    ("percent", r"$\boxed{28}$ pct", r"28\%", True, True),
    ("percent", r"$\boxed{28 pct}", r"28\%", True, True),
    ("percent", r"$\boxed{28 percent}", r"28\%", True, True),
    ("percent", r"$\boxed{28 percentage}", r"28\%", True, True),
    ("percent", "28", r"28\%", True, True),
    ("percent", "28", "0.28", False, True),
    ("percent", "28", "28/100", False, True),
    ("percent", "28/100", "28", False, True),
    ("percent", "28", r"\frac{28}{100}", False, True),
    ("percent", "28", r"28*\frac{1}{100}", False, True),
    ("percent", r"...making for a total loss of $\boxed{28\%}$.", r"28\%", True, True),
    # equations and inequalities
    ("relations", r"Therefore $x \geq 5$ is the solution.", "x >= 5", True, False),
    ("relations", r"We find that $x \lt 3$.", "x < 3", True, False),
    ("relations", "Thus $x <= 2$ is our answer.", r"x \leq 2", True, False),
    ("relations", r"Therefore $x \gt 5$ is the solution.", "x > 5", True, False),
    ("relations", r"We find that $x \neq 3$.", "x != 3", True, False),
    ("relations", "Therefore $x < 5$ is the solution.", "x > 5", False, False),
    ("relations", r"The solution is $x \leq 5$", r"x \geq 5", False, False),
    ("relations", "The solution is $x != 5$", r"x \neq 5", True, False),
    ("relations", r"$5 \geq x$", r"x \leq 5", True, True),
    ("relations", r"$5 \leq x$", r"x \geq 5", True, True),
    ("relations", "$x = 5+5+1 = 7 =11$", "x = 11", True, True),
    ("relations", "$11a+c$", "7 = 11a+c", False, True),
    ("relations", r"$x = 5+5+1 = 1/3 \approx 11$", "x = 1/3", True, True),
    ("relations", "$x=11$", "11", True, True),
    ("relations", r"$x\approx11$", "11", True, True),
    ("relations", r"$x=1/3\approx1.3$", "1/3", True, True),
    ("relations", "$-x > -1$", "x < 1", True, True),
    ("relations", "$x > -1$", "x < 1", False, True),
    ("relations", "$-x >= -1$", "x <= 1", True, True),
    ("relations", "$0$", "a +3z = 0", False, True),
    ("relations", "$0$", r"1 = \zzz = x = 0", False, True),
    ("relations", "$1$", "2x + z = 1", False, True),
    ("relations", "$0$", "a^2 + b = 0", False, True),
    ("relations", "$1$", "k=1", True, True),
    ("relations", "$k=1$", "1", True, True),
    ("relations", "$z = 3+3 = 2$", "z = 1 + 1 = 2", True, True),
    ("relations", r"$y=-\frac{1}{2}x+\frac{3}{4}$", "2x+4y-3=0", True, True),
    ("relations", "$x^2/16 + y^2/12 = 1/4$", "x^2/4 + y^2/3 = 1", True, True),
    ("relations", r"$-34x-45y+20z-100=0$", "34x+45y-20z+100=0", True, True),
    ("relations", r"Hence, $\boxed{f(2) < f(1) < f(4)}.$", "f(2) < f(1) < f(4)", True, True),
    # expressions and values
    ("values", r"$\frac{x}{7}+\frac{2}{7}$", r"\frac{x+2}{7}", True, True),
    ("values", r"$\sec^2(y)$", r"\tan^2(y)+1", True, True),
    ("values", r"$\frac{\sqrt{\sqrt{11}+\sqrt{194}}}{2\sqrt{33}+15}$",
     r"\frac{\sqrt{\sqrt{11}+\sqrt{194}}}{15+2\sqrt{33}}", True, True),
    ("values", "$(+5)(b+2)$", "(a+5)(b+2)", False, True),
    ("values", r"$\frac{1+\sqrt{5}}{2}$", "2", False, True),
    ("values", r"$\frac{34}{16}+\frac{\sqrt{1358}}{16}$", "4", False, True),
    ("values", "$1$", r"1\sqrt{19}", False, True),
    ("values", "$x+1$", "x+2n+1", False, True),
    ("values", "$(1,4.5)$", r"(1,\frac{9}{2})", True, True),
    ("values", "$(0.6,2.6667]$", r"(\frac{3}{5},\frac{8}{3}]", False, True),
    ("values", r"By sum-to-product, \[\sin (a + b) - \sin (a - b) = \boxed{2 \sin b \cos a}.\]",
     r"2 \sin b \cos a", True, True),
    ("values", r"The answer is $\boxed{\frac{\pi r}{h+r}}$.", r"\frac{\pi r}{h+r}", True, True),
    ("values", r"Therefore, $\boxed{\text{Evelyn}}$ is our answer.", r"\text{Evelyn}", True, True),
    ("values", r"Hence, the angle between the lines is $\boxed{90^\circ}.$", r"90^\circ", True, True),
    ("values", r"& = \sqrt{36 + 81}\\ & = \sqrt{117} = \boxed{3\sqrt{13}}. \end{align*}",
     r"3\sqrt{13}", True, True),
    ("values", r"so \[p(8) = \frac{q(8) + 8}{8^2 - 1} = \boxed{\frac{3}{56}}.\]", r"\frac{3}{56}",
     True, True),
    ("values", r"Thus, there are $\boxed{2}$ distinct possible values for $B$.", "2", True, True),
    ("values", r"the area of the triangle is $$\frac{1}{2}\times 3 \times 10 = "
     r"\boxed{15\mbox{ cm}^2}.$$", r"15\mbox{ cm}^2", True, True),
    ("values", r"Checking, we find that the only integer roots are $\boxed{-2,1}.$", "-2,1", True,
     True),
    ("values", r"Then, $129^{34}+96^{38} \equiv \boxed{9} \pmod{11}.$", "9", True, True),
    ("values", r"Hence, the degree of $p(x)$ is $\boxed{0}.$", "0", True, True),
    ("values", r"for a quotient of $\boxed{204_5}$. Note that in the above calculation we have "
     r"used that $13_5$ divided by $2_5$ is $4_5$.", "204_5", True, True),
    ("values", r"Then solving the system of equations, we find $(p,q,r) = \boxed{(6,31,-1)}.$",
     "(6,31,-1)", True, True),
    ("values", r"By the quadratic formula, $x = \boxed{1 \pm \sqrt{19}}.$", r"1 \pm \sqrt{19}", True,
     True),
    ("values", r"By the quadratic formula, the roots are $x = \boxed{3 \pm 2 \sqrt{2}}.$",
     r"3 \pm 2 \sqrt{2}", True, True),
    ("values", r"so the answer is $\boxed{\{1\pm\sqrt{5},-2\}}.$", r"\{1\pm\sqrt{5},-2\}", True,
     True),
    ("values", r"the sum is located between $\boxed{12 $ and $13 }. $ Final Answer: The final "
     "answer is \"$12 $ and $13 $\". I hope it is correct.", r"12\text{ and }13", True, True),
    ("values", r"Therefore, the polar coordinates are $\boxed{\left( 3, \frac{\pi}{2} \right)}.$",
     r"(3, \frac{\pi}{2})", True, True),
    ("values", r"$\frac{-2}{-2}=2+\frac{5}{3}+1=\boxed{\frac{14}{3}}$", r"\frac{14}{3}", True, True),
    # matrices
    ("matrices", "\\boxed{\n\\begin{pmatrix} 0 & 3 \\\\ 0 & -1 \\end{pmatrix}\n}.\n\\end{align*}",
     r"\begin{pmatrix} 0 & 3 \\ 0 & -1 \end{pmatrix}", True, True),
    ("matrices", r"The identity matrix is $ \begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix} $.",
     r"\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix}", True, False),
    ("matrices", r"Here is a zero matrix: $ \begin{pmatrix}0 & 0 \\0 & 0\end{pmatrix} $",
     r"\begin{bmatrix}0 & 0 \\0 & 0\end{bmatrix}", True, False),
    ("matrices", r"Special matrix: $ \left[\begin{array}{cc}1 & 2 \\3 & 4\end{array}\right] $",
     r"\begin{pmatrix}1 & 2 \\3 & 4\end{pmatrix}", True, False),
    ("matrices", r"Matrix with fractions: $ \begin{pmatrix}\frac{1}{2} & \frac{3}{4} \\ \frac{5}{6} "
     r"& \frac{7}{8}\end{pmatrix} $", r"\begin{pmatrix}\frac{1}{2} & \frac{3}{4} \\ \frac{5}{6} & "
     r"\frac{7}{8}\end{pmatrix}", True, False),
    ("matrices", r"The sum is $\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix} + \begin{pmatrix}5 & 6 \\ "
     r"7 & 8\end{pmatrix}$", r"\begin{pmatrix}6 & 8 \\ 10 & 12\end{pmatrix}", True, False),
    ("matrices", r"When multiplying by identity: $\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix} "
     r"\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix}$", r"\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix}",
     True, False),
    ("matrices", r"The matrix is $\begin{pmatrix}1 & 2 \\ 3 & 5\end{pmatrix}$",
     r"\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}", False, False),
    ("matrices", r"$\begin{pmatrix}\frac{1}{3x^{2/3}}&0&0\\0&1&0\\-\sin(x)&0&0\end{pmatrix}$",
     r"\begin{pmatrix}\frac{1}{3\sqrt[3]{x}^2}&0&0\\0&1&0\\-\sin(x)&0&0\\\end{pmatrix}", True, True),
    ("matrices", r"$\begin{pmatrix}0.33\\0.2 \end{pmatrix}$",
     r"(\begin{pmatrix}\frac{1}{3}\\ \frac{1}{5} \end{pmatrix})", False, True),
]

# Where this checker's verdict differs from Math-Verify's test, and why: (response, gold) ->
# (Math-Verify's expected verdict, the reason this project keeps its own).
DISAGREEMENTS = {
    ("1000,99", "1000.99"): (True, "a decimal comma is a locale the task does not declare; "
                             "1000,99 reads as well as the list 1000, 99"),
    ("1.22", "1,22"): (True, "the gold 1,22 is a decimal only in a locale nobody declared"),
    ("Soucis : 2,74 $ a..", "2.74"): (True, "a decimal comma, in prose"),
    ("0.111", "0,111"): (True, "a decimal comma in the gold"),
    ("$13$", r"\text{13}"): (False, r"a number written in \text{} is still the number; "
                             "Math-Verify's case has a tab where the backslash of \\text was meant"),
    ("4 4/9%", "40/9"): (False, "a percent sign is read both ways here (62.5% and 62.5), as "
                         "benchmark golds drop it; Math-Verify itself accepts 28 for 28%"),
    ("${1,3}$", "(1,3)"): (True, "{1,3} is a TeX group, so the list 1, 3: it does not say whether "
                           "a pair, an open interval or a set is meant"),
    (r"$-2 \le x \le 7$", r"x \in [-2,7]"): (False, "the inequality and the interval describe one "
                                              "set; Math-Verify compares them only when the set "
                                              "is the prediction unless told otherwise"),
    (r"Answer $ \frac{1}{2} \$ = \frac{10}{9} $", "10/9"): (
        True, "the right side of a false equation whose left side names nothing is not an answer"),
    ("$0$", r"1 = \zzz = x = 0"): (True, "a chain that says 1 = 0 states no answer"),
    ("$(0.6,2.6667]$", r"(\frac{3}{5},\frac{8}{3}]"): (
        True, "2.6667 is a rounding of the exact 8/3: accepted by Math-Verify only at the two "
              "decimal places its test asks for, refused at its default"),
    ("0.3333$", r"\frac{1}{3}"): (True, "0.3333 is a rounding of 1/3, accepted by Math-Verify "
                                  "only at the four decimal places its test asks for"),
    (r"$\begin{pmatrix}0.33\\0.2 \end{pmatrix}$",
     r"(\begin{pmatrix}\frac{1}{3}\\ \frac{1}{5} \end{pmatrix})"): (
        True, "0.33 is a rounding of the exact 1/3 (two decimal places asked by the test only)"),
    ("Answer $ \n 9 \n $", "9"): (False, "TeX reads a line break inside inline math as a space"),
    ("Answer \\( \n 9 \n \\)", "9"): (False, "TeX reads a line break inside inline math as a "
                                      "space"),
    (r"$\sum_{k=0}^n\bigl(k\bigr)$ and $42$", "42"): (
        True, "two formulas joined by 'and' are two answers, not the last one"),
    ("4 4/9 2", "2"): (True, "three numbers in a row have no one reading; the last is not chosen"),
}

# Cases this checker still grades against their label, in evaluation mode, and why (a test keeps
# this list exact, so that a fix removes its case from here).
GAPS = {
    (r"The sum is $\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix} + \begin{pmatrix}5 & 6 \\ "
     r"7 & 8\end{pmatrix}$", r"\begin{pmatrix}6 & 8 \\ 10 & 12\end{pmatrix}"):
        "matrix arithmetic is not evaluated",
    (r"When multiplying by identity: $\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix} "
     r"\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix}$", r"\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix}"):
        "matrix arithmetic is not evaluated",
    ("1 000 4/9", "9004/9"): "a mixed number whose whole part groups its thousands with a space",
}
