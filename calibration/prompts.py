"""Calibration prompts: long, dense scene descriptions (in the spirit of sDCI, which the paper calibrates on),
written for this project. A calibration records the hash of the prompt set it used."""
import hashlib
import json

DEFAULT_PROMPTS = (
    "A narrow cobblestone street in an old European town at dusk, wet stones reflecting warm yellow light from "
    "shop windows, a bicycle leaning against a green wooden door, flower boxes with red geraniums under the "
    "windows, a striped awning rolled halfway, and a couple walking away under a black umbrella.",
    "A cluttered wooden workbench in a carpenter's workshop, hand planes and chisels laid in a row, curled pale "
    "shavings on the floor, a half-finished chair frame clamped in a vice, sunlight falling through a dusty "
    "window in slanted beams, and a tin mug of coffee next to a pencil and a folding ruler.",
    "A red fox standing in deep fresh snow at the edge of a pine forest, its breath visible in the cold air, "
    "frost on its whiskers, tall dark trunks behind it, low winter sun casting long blue shadows across the "
    "snow, and small tracks leading back between the trees.",
    "A busy night market in Southeast Asia, rows of food stalls lit by strings of bare bulbs, steam rising from "
    "woks and bamboo baskets, hand-written price signs, plastic stools around folding tables, a vendor grilling "
    "skewers over charcoal, and a crowd of people holding paper plates.",
    "A quiet library reading room with tall arched windows, long oak tables with green glass lamps, shelves of "
    "leather-bound books reaching the ceiling, a rolling ladder on a brass rail, an open atlas on a table, and "
    "a single student writing notes in the afternoon light.",
    "A sandy beach at low tide in the early morning, a wooden fishing boat lying on its side, ropes and nets "
    "piled near the hull, shallow pools reflecting a pink sky, seagulls standing in a line, and distant cliffs "
    "fading into light fog.",
    "A modern kitchen with white marble counters, a bowl of lemons and limes, a copper kettle on a black gas "
    "stove, open shelves with stacked ceramic plates, a potted basil plant on the windowsill, and a wooden "
    "cutting board with a half-sliced loaf of sourdough bread.",
    "An astronaut in a white spacesuit floating inside a space station module, cables and handrails on every "
    "wall, laptops strapped with velcro, a water droplet drifting in front of the helmet visor, and the blue "
    "curve of the Earth visible through a round window.",
    "A mountain lake surrounded by jagged snowy peaks, still water mirroring the mountains, a red canoe pulled "
    "onto a pebble shore, a small wooden cabin with smoke coming from its chimney, larch trees turning golden, "
    "and thin clouds caught on the summits.",
    "A crowded subway car at rush hour, commuters holding steel poles, a man reading a folded newspaper, a "
    "woman with headphones looking out the dark window, advertisements above the seats, fluorescent lights, "
    "and a child in a yellow raincoat holding her mother's hand.",
    "A vintage red convertible parked in front of a roadside diner in the desert, neon sign glowing pink and "
    "blue against a purple evening sky, chrome details on the car, a gas pump with rounded edges, cactus plants "
    "and tumbleweed along a long empty highway.",
    "A greenhouse full of tropical plants, large monstera leaves and hanging ferns, water droplets on the glass "
    "panes, a gardener in rubber boots watering orchids, terracotta pots on metal shelves, and a white iron "
    "spiral staircase leading to an upper walkway.",
    "A still life on a linen tablecloth: a blue and white porcelain jug, three pears, a cut pomegranate with "
    "glistening red seeds, a silver spoon, a glass of red wine catching the light, and a dark painted "
    "background in the style of a Dutch master.",
    "A herd of elephants crossing a wide muddy river on the savanna, a calf walking close to its mother, water "
    "splashing around their legs, acacia trees on the far bank, dust in the golden late-afternoon air, and "
    "birds flying low over the water.",
    "A small bakery counter in the morning, glass display cases with croissants, fruit tarts and cinnamon "
    "rolls, a chalkboard menu on the wall, a baker in a white apron sliding a tray out of a stone oven, and "
    "paper bags stacked by an old brass cash register.",
    "An underwater coral reef in clear turquoise water, bright orange clownfish among green sea anemones, a sea "
    "turtle gliding above, shafts of sunlight reaching the sandy floor, purple fan corals, and a school of "
    "small silver fish turning together.",
    "A rainy city intersection seen from above, dozens of colourful umbrellas crossing a zebra crossing, yellow "
    "taxis waiting at a red light, puddles reflecting traffic lights and shop signs, and steam rising from a "
    "manhole cover.",
    "A child's bedroom with a bunk bed, glow-in-the-dark stars on the ceiling, a wooden toy train set on a "
    "round rug, picture books scattered on the floor, a globe on a small desk, a teddy bear on the pillow, and "
    "evening light through curtains patterned with rockets.",
    "An old stone lighthouse on a rocky headland during a storm, huge waves breaking white against the rocks, "
    "the beam of light cutting through rain, dark clouds, a small keeper's cottage with one lit window, and "
    "wind-bent grass along the cliff path.",
    "A farmers' market stall in autumn, wooden crates of red and green apples, orange pumpkins of many sizes, "
    "bundles of carrots with their leaves, jars of honey in a row, a hand-painted sign, and a farmer in a "
    "plaid shirt weighing vegetables on an old scale.",
)


def prompts_hash(prompts):
    """Short stable hash of a prompt list (order matters: prompt i is paired with seed i)."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def parse_prompts(text):
    """A user's prompt list, one prompt per non-empty line; empty text means the default set."""
    if text is None or not str(text).strip():
        return list(DEFAULT_PROMPTS)
    prompts = [line.strip() for line in str(text).splitlines() if line.strip()]
    return prompts


def prompt_seed(seed, index):
    """Common random numbers: calibration prompt `index` always gets its own seed (the official code reseeds per
    batch of 5, so its 25 prompts share 5 noises)."""
    return int(seed) + int(index)
