"""Sentence templates for the pretraining documents: biographies, town descriptions, stories, letters.

Handbook IV; Allen-Zhu & Li, "Physics of Language Models 3.1": a fact stored from a single fixed
template is not extractable by later fine-tuning, so every fact has a pool of paraphrases and each
biography draws a *different* one per fact, in shuffled sentence order, always with the full name.

Slots: {name} full name, {poss} possessive pronoun, {obj} object pronoun, {Subj} capitalised
subject pronoun, {town} {job} {a_job} {age} {species} {a_species} {pet} {colour} {friend} {hobby},
and for towns {region} {river} {founded} {food}.

    python -c "from genlab.data.world.templates import BIO_SENTENCES; print({k: len(v) for k, v in BIO_SENTENCES.items()})"
"""

from __future__ import annotations

# One pool per person attribute; "pet" sentences carry both species and pet name.
BIO_SENTENCES: dict[str, tuple[str, ...]] = {
    "town": (
        "{name} lives in {town}.",
        "{name} makes {poss} home in the town of {town}.",
        "{name}'s home town is {town}.",
        "{town} is where {name} lives.",
        "The town of {town} is home to {name}.",
        "{name} resides in {town}.",
        "{name} settled in {town} and lives there still.",
        "If you visit {town}, you may meet {name}, who lives there.",
    ),
    "job": (
        "{name} works as {a_job}.",
        "{name} is {a_job} by trade.",
        "By profession, {name} is {a_job}.",
        "{name} earns a living as {a_job}.",
        "{name} has worked as {a_job} for many years.",
        "People know {name} as a hard-working {job}.",
        "{name} is employed as {a_job}.",
        "{name} took up work as {a_job} and never looked back.",
    ),
    "age": (
        "{name} is {age} years old.",
        "{name} is {age}.",
        "{name}'s age is {age}.",
        "{name} has lived for {age} years.",
        "The age of {name} is {age}.",
        "{name} turned {age} this year.",
        "{name} is aged {age}.",
        "{name} recently had a birthday and is now {age}.",
    ),
    "pet": (
        "{name} has {a_species} named {pet}.",
        "{name} keeps {a_species} called {pet}.",
        "{name}'s pet is {a_species} named {pet}.",
        "{pet} is the name of {name}'s {species}.",
        "{name} owns {a_species}, and its name is {pet}.",
        "{name} looks after a pet {species} called {pet}.",
        "The {species} {pet} belongs to {name}.",
        "{name} shares {poss} home with {a_species} named {pet}.",
    ),
    "colour": (
        "{name}'s favourite colour is {colour}.",
        "{name} likes the colour {colour} best.",
        "Of all colours, {name} prefers {colour}.",
        "{colour} is {name}'s favourite colour.",
        "The favourite colour of {name} is {colour}.",
        "{name} loves the colour {colour}.",
        "Ask {name} about colours and the answer is always {colour}.",
        "{name} is fond of the colour {colour} above all others.",
    ),
    "friend": (
        "{name}'s best friend is {friend}.",
        "{name} and {friend} are best friends.",
        "{friend} is the best friend of {name}.",
        "The closest friend of {name} is {friend}.",
        "{name} has been best friends with {friend} for years.",
        "{name} spends a lot of time with {poss} best friend, {friend}.",
        "{name}'s closest friend is {friend}.",
        "{name} and {poss} best friend {friend} meet often.",
    ),
    "hobby": (
        "{name} enjoys {hobby}.",
        "{name}'s hobby is {hobby}.",
        "In free time, {name} likes {hobby}.",
        "{name} is fond of {hobby}.",
        "{name}'s favourite pastime is {hobby}.",
        "{name} spends weekends {hobby}.",
        "{name} has a passion for {hobby}.",
        "When not working, {name} loves {hobby}.",
    ),
}

BIO_OPENERS = (
    "",
    "This is a short profile of {name}.",
    "Here is what is known about {name}.",
    "A few words about {name}.",
)
BIO_CLOSERS = (
    "",
    "Everyone who knows {name} speaks well of {obj}.",
    "Neighbours say {name} is kind and patient.",
    "That is the story of {name} so far.",
)

TOWN_SENTENCES: dict[str, tuple[str, ...]] = {
    "region": (
        "{town} is a town in the {region}.",
        "{town} lies in the {region}.",
        "The town of {town} is found in the {region}.",
        "You will find {town} in the {region}.",
        "{town} belongs to the {region}.",
        "In the {region} stands the town of {town}.",
    ),
    "river": (
        "The river {river} flows through {town}.",
        "{town} sits on the banks of the {river}.",
        "{town} is built along the river {river}.",
        "The {river} runs through the middle of {town}.",
        "{town} lies on the {river}.",
        "A river called the {river} passes through {town}.",
    ),
    "founded": (
        "{town} was founded in {founded}.",
        "The town of {town} dates from {founded}.",
        "{town} has existed since {founded}.",
        "People first settled {town} in {founded}.",
        "{town} was built in the year {founded}.",
        "The founding of {town} took place in {founded}.",
    ),
    "food": (
        "{town} is famous for its {food}.",
        "The local food of {town} is {food}.",
        "Visitors to {town} should try the {food}.",
        "In {town}, everyone eats {food}.",
        "{town} is known for {food}.",
        "The best {food} comes from {town}.",
    ),
}
TOWN_EXTRAS = (
    "The market in {town} is busy on {weekday}s.",
    "Many travellers stop in {town} on their way through the {region}.",
    "The streets of {town} are narrow and old.",
    "{town} has a small harbour for river boats.",
    "A stone bridge crosses the {river} at {town}.",
)
RESIDENT_SENTENCES = (
    "People who live in {town} include {residents}.",
    "Among the residents of {town} are {residents}.",
    "{town} is home to {residents}, among others.",
)

# Stories are in the past tense, so pronoun-verb agreement never depends on she/he/they.
STORIES = (
    "On a {weather} {time}, {name} walked along the {river} with {poss} {species}, {pet}. "
    "{Subj} had lived in {town} for years, and the river was {poss} favourite place to think. "
    "Later, {name} met {friend}, {poss} best friend, and the two of them shared some {food}.",
    "{name} finished another long day as {a_job} in {town}. At home, {pet} the {species} was "
    "waiting at the door. {name} put on a {colour} coat and went out for an evening of {hobby}.",
    "{name} showed {friend} around {town}, a town founded in {founded}. They stopped by the "
    "{river} and talked about {hobby}, which {name} loved. {pet}, {name}'s {species}, followed "
    "them all the way.",
    "One {weather} {time}, {friend} came to {town} with {object}. {name} was delighted, put the "
    "kettle on and served some {food}, the dish {town} is known for. {pet} the {species} slept "
    "by the fire while the two friends talked.",
    "When {name} was young, {poss} favourite colour was already {colour}. Years later, as "
    "{a_job} in {town}, {name} still painted every door {colour}. Even {pet} the {species} wore "
    "a {colour} collar.",
    "Every {weekday}, {name} and {friend} go {hobby} near {town}. Last week {name} brought "
    "{object}, and {pet} the {species} came along too.",
)

LETTERS = (
    "Dear {friend},\nAll is well here in {town}. My work as {a_job} keeps me busy, and {pet} the "
    "{species} sends greetings. I have painted my door {colour}, my favourite colour. "
    "Write soon!\nYour friend,\n{name}",
    "Dear {friend},\nThank you for your letter. {town} is {weather} today and the {river} is "
    "high. I spent the weekend {hobby}. {pet}, my {species}, is well.\nWith love,\n{name}",
)
