"""Everyday English sentences written for this project, grouped by topic.

A second held-out domain for sentence encoders calibrated on the standard library's
docstrings (``optprune.nn.corpus``): nothing here is ever used for calibration, so a
refit that only learns the docstrings' domain shows up as a loss here. The topics
also measure whether a pruned encoder keeps topic structure
(:func:`topic_neighbour_accuracy`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["EVERYDAY", "everyday_sentences", "topic_neighbour_accuracy"]

EVERYDAY: dict[str, tuple[str, ...]] = {
    "cooking": (
        "Chop the onions finely before you add them to the hot pan.",
        "The soup needs more salt and a little black pepper.",
        "She baked a chocolate cake for her brother's birthday.",
        "Let the dough rest for an hour so it can rise.",
        "We grilled fresh fish and corn on the barbecue last night.",
        "Stir the sauce slowly so that it does not burn.",
        "My grandmother always made pancakes on Sunday mornings.",
        "Boil the pasta for ten minutes and then drain the water.",
        "The recipe asks for two eggs, flour and a cup of milk.",
        "He cut the tomatoes and tossed them with olive oil and basil.",
        "Roast the vegetables until the edges turn golden brown.",
        "I forgot to buy butter, so the cookies came out dry.",
        "The rice was sticky because we added too much water.",
        "They served warm bread with garlic butter before dinner.",
        "Taste the stew before you decide whether it needs more spice.",
        "Put the leftover curry in the fridge once it has cooled.",
    ),
    "weather": (
        "It rained all afternoon and the streets were flooded.",
        "The forecast says it will be sunny and warm tomorrow.",
        "A cold wind blew from the north all through the night.",
        "Heavy snow closed the mountain roads for two days.",
        "We stayed inside because the thunderstorm was so loud.",
        "The morning fog made it hard to see the other side of the river.",
        "Summer this year has been unusually hot and dry.",
        "Bring an umbrella, because the clouds look dark and heavy.",
        "The temperature dropped below freezing after sunset.",
        "A rainbow appeared over the hills when the shower stopped.",
        "Strong gusts knocked over the garden chairs.",
        "The autumn leaves turned red after the first frost.",
        "It was so humid that our clothes would not dry outside.",
        "The storm knocked out the power in half of the town.",
        "Spring came early and the snow melted in a week.",
        "Hail the size of peas hit the car windows.",
    ),
    "travel": (
        "Our flight to Lisbon was delayed by three hours.",
        "They took the night train across the border.",
        "Remember to pack your passport and a charger for your phone.",
        "The hotel room had a small balcony facing the sea.",
        "We rented bikes and rode along the old canal.",
        "The bus to the airport leaves every twenty minutes.",
        "He lost his suitcase somewhere between two connecting flights.",
        "The guide showed us the oldest church in the city.",
        "We booked a cabin by the lake for the long weekend.",
        "The ferry crossing was rough, and many passengers felt sick.",
        "She bought a map and a phrase book before the trip.",
        "The queue at passport control moved very slowly.",
        "Our taxi driver knew every shortcut through the narrow streets.",
        "We spent the afternoon walking around the harbour.",
        "The train was full, so we stood all the way to the coast.",
        "They camped in the desert and watched the stars at night.",
    ),
    "health": (
        "The doctor told him to rest and drink plenty of water.",
        "She goes for a run every morning before work.",
        "My back hurts after sitting at the desk all day.",
        "You should see a dentist if the tooth still aches tomorrow.",
        "He caught a cold after walking home in the rain.",
        "The nurse checked his blood pressure and temperature.",
        "Eating more vegetables helped her feel less tired.",
        "Wash your hands before meals to avoid getting sick.",
        "The pharmacy was closed, so we could not get the medicine.",
        "After the operation he needed six weeks to recover.",
        "Getting enough sleep makes it easier to concentrate.",
        "She twisted her ankle while climbing down the stairs.",
        "The children got their flu shots at the clinic.",
        "A short walk after lunch is good for digestion.",
        "He stopped drinking coffee because it kept him awake.",
        "The headache went away after she lay down in a dark room.",
    ),
    "sports": (
        "Our team won the football match in the last minute.",
        "She swims forty lengths of the pool three times a week.",
        "The referee showed the player a red card.",
        "He trained for months to run his first marathon.",
        "The tennis final lasted almost five hours.",
        "They lost the basketball game by a single point.",
        "The crowd cheered when the goalkeeper saved the penalty.",
        "Cycling up the mountain pass took the whole morning.",
        "The coach made the players practise passing for an hour.",
        "She broke the school record in the long jump.",
        "We watched the race on a big screen in the park.",
        "The match was cancelled because the pitch was frozen.",
        "He scored three goals in the second half.",
        "The rowing club meets at the river at six in the morning.",
        "Our volleyball team travels to the tournament next week.",
        "The boxer trained twice a day before the fight.",
    ),
    "shopping": (
        "The supermarket was out of bread by the evening.",
        "She returned the shoes because they were too small.",
        "I paid for the groceries with my card at the self checkout.",
        "The shop has a big sale on winter coats this week.",
        "He compared the prices before buying a new phone.",
        "We bought apples, cheese and fresh flowers at the market.",
        "The cashier gave me the wrong change.",
        "Online orders usually arrive within two days.",
        "She keeps the receipts in case something breaks.",
        "The bakery on the corner sells the best croissants.",
        "They waited in line for an hour to buy concert tickets.",
        "The store offers free delivery for large furniture.",
        "I need to buy a birthday present for my niece.",
        "The price of coffee has gone up again this month.",
        "He found a cheap second hand bike in the classified ads.",
        "We made a shopping list so we would not forget anything.",
    ),
    "family": (
        "My sister is getting married in the summer.",
        "The kids spent the whole afternoon playing in the garden.",
        "Grandpa tells the same funny story at every dinner.",
        "We visit our cousins in the countryside every Easter.",
        "Their baby started walking last week.",
        "My parents celebrated their fortieth wedding anniversary.",
        "He picks up his daughter from school every afternoon.",
        "The whole family gathered for a picnic by the lake.",
        "My brother and I shared a bedroom when we were young.",
        "She called her mother to ask for advice.",
        "The twins were born on a snowy night in January.",
        "Our aunt sends us a postcard from every trip.",
        "They adopted a little boy from the neighbouring town.",
        "Dad taught me how to ride a bicycle in the park.",
        "The children made breakfast for their parents on Mother's Day.",
        "We look at old photo albums when the family comes together.",
    ),
    "work": (
        "The meeting was moved to Thursday afternoon.",
        "She asked her manager for a day off next week.",
        "He finished the report just before the deadline.",
        "Our office is moving to a bigger building in the spring.",
        "The printer on the second floor is broken again.",
        "They hired three new people for the sales team.",
        "I answer emails first thing every morning.",
        "The company gave everyone a bonus at the end of the year.",
        "She was promoted after five years in the same job.",
        "The interview lasted an hour and went very well.",
        "We had lunch with our colleagues in the cafeteria.",
        "He works from home on Mondays and Fridays.",
        "The presentation to the clients went better than expected.",
        "Our boss wants the budget ready by the end of the month.",
        "She quit her job to start a small bakery.",
        "The night shift starts at ten and ends at six.",
    ),
    "nature": (
        "A family of ducks swam across the pond.",
        "The old oak tree in the field is hundreds of years old.",
        "We saw a deer at the edge of the forest at dawn.",
        "Bees were buzzing around the flowers in the meadow.",
        "The river runs faster after the snow melts.",
        "An owl was hooting in the woods behind the house.",
        "The cat sleeps in the sun by the window all afternoon.",
        "Wild strawberries grow along the path to the beach.",
        "The dog barked at the squirrels in the garden.",
        "Thousands of birds fly south at the end of the summer.",
        "The waterfall was even higher than we had imagined.",
        "A fox crossed the road in front of our car.",
        "The mountains were covered in purple heather.",
        "Frogs were croaking loudly near the stream.",
        "The horses grazed quietly in the green valley.",
        "We collected shells and stones on the beach.",
    ),
    "home": (
        "The kitchen tap has been dripping for a week.",
        "We painted the living room a light shade of blue.",
        "He fixed the broken shelf with a few new screws.",
        "The heating stopped working during the coldest week of the year.",
        "She hung new curtains in the bedroom.",
        "We need to clean the gutters before the autumn rain.",
        "The washing machine makes a loud noise when it spins.",
        "They replaced the old carpet with a wooden floor.",
        "I vacuumed the stairs and mopped the hallway.",
        "The front door squeaks every time someone opens it.",
        "We planted tomatoes and herbs in the back garden.",
        "He changed the light bulb in the bathroom.",
        "The roof leaked during the storm, so we called a builder.",
        "She tidied the garage and gave away old toys.",
        "The landlord promised to repair the window this week.",
        "We moved the sofa closer to the fireplace for the winter.",
    ),
}


def everyday_sentences() -> tuple[list[str], list[str]]:
    """All sentences and their topics, in a fixed order."""
    sents, topics = [], []
    for topic, ss in EVERYDAY.items():
        sents += list(ss)
        topics += [topic] * len(ss)
    return sents, topics


def topic_neighbour_accuracy(emb: np.ndarray, topics: list[str]) -> float:
    """Share of sentences whose nearest other sentence (cosine) has the same topic."""
    e = np.asarray(emb, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    nn_ = sim.argmax(1)
    t = np.asarray(topics)
    return float((t[nn_] == t).mean())
