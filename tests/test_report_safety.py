"""The report page stays one well-formed page whatever the names in it: the embedded JSON cannot end
or re-open its <script> block, and JSON.parse (json.loads here: the same grammar) returns the names."""

import json
import re

import numpy as np

from experiments import report_page

HOSTILE = "</script><!--<script>alert(1)</script>&amp;\u2028\u2029'\""


def _embedded(page: str) -> str:
    """The text of the data block as an HTML parser reads it: up to the first `</script`."""
    start = page.index("<script type='application/json' id='compnn-data'>")
    body = page[start:].split(">", 1)[1]
    return body[:body.lower().index("</script")]


def test_a_hostile_name_round_trips_through_the_embedded_json(tmp_path):
    grid = np.zeros((2, 2), np.int32)
    q = report_page.QueryEntry(HOSTILE, [("CompNN", "data:,")], 0, grid, grid, grid, 1, (2, 2))
    train = {0: report_page.TrainImage(HOSTILE + "-train", {"photo": "data:,"})}
    page = report_page.write_report(tmp_path, title="t", sections=[("a", "A", "<p>x</p>")], queries=[q],
                                    train_images=train, class_names=[HOSTILE]).read_text()
    text = _embedded(page)
    # Nothing the HTML tokenizer reacts to inside a script block (`<!--` + `<script` switches it to
    # the double-escaped state, where the block's own `</script>` no longer ends it).
    assert not re.search(r"<!--|<script|</|-->", text, re.I), text[:200]
    data = json.loads(text)
    assert data["class_names"] == [HOSTILE]
    assert data["train"]["0"]["id"] == HOSTILE + "-train"
    # The page's own script follows the data block, intact.
    assert page.count("<script") == 2 and re.search(r"</script>\s*</body>\s*</html>\s*$", page)


def test_embed_json_escapes_exactly_the_dangerous_characters():
    text = report_page.embed_json({"k": "<>&\u2028\u2029 plain é"})
    assert text == '{"k":"\\u003c\\u003e\\u0026\\u2028\\u2029 plain \\u00e9"}'
    assert json.loads(text) == {"k": "<>&\u2028\u2029 plain é"}
