"""The shipped sample corpus: finance-like and general English text written for this project.

Documents are composed from sentence templates and word lists below (all written for the
project, so the corpus carries the project's licence), seeded, so the output is reproducible. A
share of deliberately bad documents exercises every curation step: too short, boilerplate and
cookie lines, repeated lines, number-only tables, lorem ipsum, other languages, personal data,
exact and near duplicates.

    python -m pretrain.data.sample_corpus data/sample     # writes finance.jsonl and general.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

COMPANIES = ["Northwind Capital", "Harbor Lane Bank", "Alder Freight", "Meridian Foods", "Coppergate Energy",
             "Silverline Telecom", "Oakridge Insurance", "Bluewater Mining", "Kestrel Pharmaceuticals",
             "Granite Peak Retail", "Lumen Semiconductors", "Redfield Utilities", "Summit Airlines",
             "Ironbridge Steel", "Willow Creek Software", "Pinecrest Holdings"]
METRICS = ["revenue", "net income", "operating profit", "free cash flow", "earnings per share", "gross margin",
           "net interest income", "operating expenses", "capital expenditure", "loan loss provisions"]
PERIODS = ["the first quarter", "the second quarter", "the third quarter", "the fourth quarter",
           "the fiscal year", "the first half", "the nine months to September"]
DIRECTIONS = [("up", "rose"), ("down", "fell"), ("up", "climbed"), ("down", "declined"), ("up", "increased")]
ANALYSTS = ["analysts at a large broker", "the median forecast", "consensus estimates", "most credit analysts",
            "the company's own guidance"]
DRIVERS = ["higher commodity prices", "weaker consumer demand", "a stronger dollar", "lower funding costs",
           "cost savings from the restructuring", "strong demand for its new products", "rising wage costs",
           "a one-off tax charge", "gains on the sale of a subsidiary", "tighter lending standards"]
MARKET = ["The shares closed {dir} {pct} percent at {price} dollars after the results were published.",
          "The board declared a quarterly dividend of {cents} cents per share, payable next month.",
          "Management said that it expects {metric} to grow at a low single digit rate next year.",
          "The bank kept its common equity tier one ratio at {ratio} percent, well above the regulatory minimum.",
          "Bond investors demanded a spread of {bps} basis points over Treasuries for the new ten year notes.",
          "The company repurchased {m} million shares during the period and has authorised a further program.",
          "Its net debt stood at {amount} million dollars, or {lev} times earnings before interest and taxes.",
          "The central bank held its policy rate at {ratio} percent and signalled that inflation was easing.",
          "Credit rating agencies affirmed the rating with a stable outlook, citing the strong balance sheet.",
          "The chief financial officer told investors that the company would keep a disciplined approach to costs."]
FIN_TEMPLATES = ["{co} reported {metric} of {amount} million dollars for {period}, {dir} {pct} percent from a year earlier.",
                 "The result compared with {analysts} of {amount2} million dollars.",
                 "The change was mainly driven by {driver}, the company said in a statement.",
                 "{co} said that the outlook for the rest of the year remains uncertain because of {driver}.",
                 "In its annual report, {co} noted that {metric} {verb} to {amount} million dollars as a result of {driver}."]
TOPICS = {
    "gardening": ["Tomatoes grow best in a sunny spot with rich soil and regular watering.",
                  "Many gardeners plant marigolds next to their vegetables to keep pests away.",
                  "A layer of mulch keeps the soil moist and stops weeds from taking over the beds.",
                  "Roses should be pruned in late winter, just before the new growth begins.",
                  "Compost made from kitchen scraps and leaves is one of the best things you can give a garden.",
                  "If the leaves turn yellow, the plant may be getting too much water rather than too little.",
        "Seeds sown in early spring often need a cold frame to protect them from late frosts.",
        "Bees visit lavender and borage all summer, which helps the fruit trees nearby.",
        "Potatoes should be lifted on a dry day and left on the surface for a few hours to harden.",
        "Clay soil holds water for a long time, so it benefits from grit and plenty of organic matter.",
        "Climbing beans need tall canes, and they grow surprisingly quickly once the nights are warm.",
        "A small pond will attract frogs, and frogs will eat a great many slugs."],
    "cooking": ["A good soup starts with onions cooked slowly in butter until they are soft and sweet.",
                "Bread dough needs time to rise, so it is worth making it the evening before.",
                "Salt brings out the flavour of almost every dish, but it should be added with care.",
                "Fresh herbs are best added at the end of cooking, while dried herbs can go in at the start.",
                "Roasting vegetables at a high temperature gives them a crisp edge and a deeper taste.",
                "The sauce is ready when it coats the back of a spoon and a line drawn through it stays clear.",
        "Rice keeps its shape better when it is rinsed several times before it goes into the pot.",
        "A cast iron pan holds heat well, which makes it ideal for searing meat or frying potatoes.",
        "Lemon juice added just before serving lifts a heavy stew and makes it taste fresher.",
        "Pastry should be handled as little as possible and kept cold until it goes into the oven.",
        "Beans soaked overnight cook faster and are easier to digest than beans cooked from dry.",
        "Letting a roast rest before carving keeps the juices in the meat instead of on the board."],
    "travel": ["The old town is best explored on foot, and most of the museums are within a short walk.",
               "Trains between the two cities run every hour and the journey takes about three hours.",
               "It is a good idea to book a room early if you plan to visit during the summer festival.",
               "The coastal path offers wide views of the cliffs and the small fishing villages below.",
               "Local markets are the best place to try the regional cheese and freshly baked bread.",
               "Visitors should carry some cash, because many small shops in the villages do not take cards.",
        "The ferry leaves from the north harbour twice a day, weather permitting.",
        "Hikers should check the forecast before setting out, since mist can roll in from the sea without warning.",
        "Most guest houses serve a large breakfast, and some will pack a lunch for a small fee.",
        "The cathedral tower is open to visitors who are willing to climb its three hundred steps.",
        "Cycling is a pleasant way to see the valley, and bicycles can be hired at the station.",
        "In the evening, the square fills with families, street musicians and people selling roasted nuts."],
    "science": ["Water boils at a lower temperature at high altitude because the air pressure is lower.",
                "The moon has no atmosphere to speak of, so its sky is black even during the day.",
                "Plants use the energy of sunlight to turn water and carbon dioxide into sugar.",
                "Sound travels much faster through water than it does through the air.",
                "The human body replaces most of the cells in the lining of the stomach every few days.",
                "Light from the nearest star beyond the sun takes a little over four years to reach us.",
        "A magnet loses its strength if it is heated above a certain temperature.",
        "Earthquakes are recorded by instruments that can detect movements far smaller than a hair.",
        "Salt water freezes at a lower temperature than fresh water, which is why roads are salted in winter.",
        "Some birds find their way across oceans by sensing the magnetic field of the earth.",
        "Glass is made by melting sand at very high temperatures and cooling it quickly.",
        "The oldest trees on earth have been growing for more than four thousand years."],
    "history": ["The canal was dug by hand over twelve years and opened to traffic in the spring.",
                "Many of the town's oldest houses were built by merchants who grew rich from the wool trade.",
                "The library was founded with a gift of books from a local teacher who wanted everyone to read.",
                "During the long winter of that year, the river froze so hard that fairs were held on the ice.",
                "The first printing press in the region produced prayer books, almanacs and school primers.",
                "The bridge that stands today replaced a wooden one that was swept away by a flood.",
        "The market charter granted by the king allowed the town to hold a fair twice a year.",
        "Workers who built the railway lived in camps that moved along the line as it grew.",
        "The castle changed hands several times before it was finally abandoned and left to decay.",
        "Records kept by the parish show that the harvest failed three years in a row.",
        "The school opened with just twelve pupils and a single teacher who taught every subject.",
        "A great fire destroyed much of the harbour district, and the new streets were laid out in straight lines."],
}
CONNECTORS = ["In addition,", "However,", "For this reason,", "At the same time,", "As a result,", "Even so,",
              "In most cases,", "On the other hand,"]
BOILERPLATE = ["This website uses cookies to improve your experience.", "Click here to subscribe to our newsletter",
               "All rights reserved.", "Share this article on social media", "Enable javascript to view the comments."]
FOREIGN = ["Die Bank meldete für das erste Quartal einen Gewinn von zwölf Millionen Euro, deutlich mehr als erwartet. "
           "Der Vorstand rechnet für das Gesamtjahr mit einem stabilen Ergebnis und einer höheren Dividende.",
           "Le marché des obligations est resté calme cette semaine, malgré les nouvelles données sur l'inflation. "
           "Les investisseurs attendent la prochaine décision de la banque centrale avec prudence.",
           "El mercado de valores cerró la semana con ganancias moderadas gracias a los buenos resultados de las "
           "empresas tecnológicas y a la caída de los precios de la energía."]


def _fill(rng: random.Random, template: str) -> str:
    direction, verb = rng.choice(DIRECTIONS)
    return template.format(co=rng.choice(COMPANIES), metric=rng.choice(METRICS), period=rng.choice(PERIODS),
                           amount=f"{rng.randint(12, 9800):,}", amount2=f"{rng.randint(12, 9800):,}", dir=direction,
                           verb=verb, pct=rng.randint(1, 38), analysts=rng.choice(ANALYSTS), driver=rng.choice(DRIVERS),
                           price=f"{rng.uniform(4, 480):.2f}", cents=rng.randint(5, 95), ratio=f"{rng.uniform(2, 16):.1f}",
                           bps=rng.randint(60, 420), m=rng.randint(1, 60), lev=f"{rng.uniform(0.4, 4.5):.1f}")


def finance_document(rng: random.Random) -> str:
    """No template twice in one document: repeated phrasing is what Gopher's repetition rules catch."""
    templates = rng.sample(FIN_TEMPLATES, k=rng.randint(3, 5)) + rng.sample(MARKET, k=rng.randint(3, 6))
    rng.shuffle(templates)
    sentences = [_fill(rng, t) for t in templates]
    cut = sorted(rng.sample(range(1, len(sentences)), k=min(2, len(sentences) - 1)))
    return "\n\n".join(" ".join(sentences[a:b]) for a, b in zip([0, *cut], [*cut, len(sentences)], strict=True))


def general_document(rng: random.Random) -> str:
    topic = rng.choice(list(TOPICS))
    picked = rng.sample(TOPICS[topic], k=rng.randint(6, 10))
    connectors = iter(rng.sample(CONNECTORS, k=len(CONNECTORS)))
    sentences = [f"{next(connectors)} {s[0].lower()}{s[1:]}" if i and rng.random() < 0.3 else s
                 for i, s in enumerate(picked)]
    cut = sorted(rng.sample(range(1, len(sentences)), k=2))
    return "\n\n".join(" ".join(sentences[a:b]) for a, b in zip([0, *cut], [*cut, len(sentences)], strict=True))


def bad_document(rng: random.Random, domain: str, good) -> tuple[str, str]:
    """(kind, text) of a document some curation step should catch or change."""
    kind = rng.choice(["short", "boilerplate", "repeated", "table", "lorem", "foreign", "pii", "duplicate", "near"])
    if kind == "short":
        return kind, "Markets were quiet today."
    if kind == "boilerplate":
        return kind, "\n".join(rng.choice(BOILERPLATE) for _ in range(8))
    if kind == "repeated":
        line = _fill(rng, rng.choice(MARKET)) if domain == "finance" else rng.choice(TOPICS["travel"])
        return kind, "\n".join([line] * 12)
    if kind == "table":
        return kind, "\n".join(" | ".join(f"{rng.uniform(-50, 900):.1f}" for _ in range(8)) for _ in range(15))
    if kind == "lorem":
        return kind, "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 12
    if kind == "foreign":
        return kind, rng.choice(FOREIGN) + " " + rng.choice(FOREIGN)
    if kind == "pii":
        text = good(rng)
        return kind, text + (f"\n\nFor questions, write to investor.relations{rng.randint(1, 99)}@example.com "
                             f"or call 212-555-{rng.randint(1000, 9999)}. Our server is at 93.184.216.{rng.randint(1, 250)}.")
    return kind, ""  # duplicate / near: filled in by the caller from an earlier document


def write_sample(out_dir: str | Path, docs_per_domain: int = 600, bad_share: float = 0.15, seed: int = 2024) -> dict:
    from planner.core.io import atomic_write_text

    out, counts = Path(out_dir), {}
    for domain, good in (("finance", finance_document), ("general", general_document)):
        rng = random.Random(f"{seed}-{domain}")
        records, kinds = [], {}
        for i in range(docs_per_domain):
            kind, text = "good", good(rng)
            if records and rng.random() < bad_share:
                kind, text = bad_document(rng, domain, good)
                if kind == "duplicate":
                    text = rng.choice(records)["text"]
                elif kind == "near":
                    base = rng.choice(records)["text"]
                    text = base.replace(" the ", " a ", 1) + " " + rng.choice(CONNECTORS) + " that is all."
            kinds[kind] = kinds.get(kind, 0) + 1
            records.append({"id": f"{domain}-{i:05d}", "text": text, "kind": kind})
        atomic_write_text(out / f"{domain}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        counts[domain] = kinds
    return counts


if __name__ == "__main__":
    print(write_sample(sys.argv[1] if len(sys.argv) > 1 else "data/sample"))
