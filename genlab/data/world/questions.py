"""Question templates: the phrasings SFT trains on, and the held-out phrasings only evaluation uses.

Handbook IV (instruct fine-tuning) and V (benchmarks): set (a) measures whether SFT taught the
*skill* of answering about people rather than a lookup of memorised question strings, so its
templates (`HELDOUT_QUESTIONS`) never occur in any SFT conversation (tests check this with a regex
per template). Every template has a single {name} slot (plus {poss} where a pronoun reads better).

    python -c "from genlab.data.world.questions import SFT_QUESTIONS; print(sorted(SFT_QUESTIONS))"
"""

from __future__ import annotations

import re

# Person attributes a question can ask, in a fixed order (determinism depends on it).
FACT_ATTRIBUTES = ("town", "job", "age", "pet_species", "pet_name", "colour", "friend", "hobby")

# The last five per attribute ("Please say ...", "Could you say ...", "Report ...", one more name-first
# shape) widen the wording SFT sees: set (a) rose from 75% to 84% (seed 0) and from 69% to 83% (seed 1)
# with them, the default speedrun otherwise unchanged (instruction variety, as in FLAN; Wei et al. 2022).
SFT_QUESTIONS: dict[str, tuple[str, ...]] = {
    "town": ("Where does {name} live?", "What town does {name} live in?", "In which town does {name} live?",
             "What is {name}'s home town?", "Which town is {name} from?", "Where is {name}'s home?",
             "Do you know where {name} lives?", "Which town is home to {name}?", "Where has {name} settled?",
             "{name} lives where?", "{name} has a home in which town?",
             "I would like to know where {name} lives.", "Say where {name} lives.",
             "State the town where {name} lives.",
             "Please say which town {name} lives in.", "Could you say where {name} lives?",
             "Which place does {name} live in?", "{name} is from which town?",
             "Report the town {name} lives in."),
    "job": ("What is {name}'s job?", "What does {name} do for a living?", "What is the occupation of {name}?",
            "What work does {name} do?", "What is {name}'s profession?", "What job does {name} have?",
            "Do you know what {name} does for work?", "How does {name} earn a living?",
            "What is {name}'s line of work?", "{name} works as what?", "{name} has which occupation?",
            "I would like to know what {name} does for work.", "Say what {name} does for a living.",
            "State the occupation of {name}.",
            "Please say what job {name} has.", "Could you say what {name} does for work?",
            "What kind of work does {name} do?", "{name} does what for a living?", "Report the job {name} has."),
    "age": ("How old is {name}?", "What is {name}'s age?", "What age is {name}?",
            "How many years old is {name}?", "Do you know how old {name} is?", "What is the age of {name}?",
            "How many years has {name} lived?", "Could you say how old {name} is?", "{name} is what age?",
            "{name} has lived how many years?", "I would like to know the age of {name}.",
            "Say how old {name} is.", "State how many years old {name} is.",
            "Please say what age {name} is.", "Could you say what age {name} is?",
            "How many years of age is {name}?", "{name} has what age?", "Report the age of {name}."),
    "pet_species": ("What kind of pet does {name} have?", "What animal does {name} keep as a pet?",
                    "What species is {name}'s pet?", "What type of animal is {name}'s pet?",
                    "Which animal does {name} own?", "Do you know what pet {name} has?",
                    "What sort of animal does {name} keep?", "What pet does {name} look after?",
                    "{name} keeps what kind of pet?", "{name} has which animal as a pet?",
                    "I would like to know what pet {name} has.", "Say what sort of pet {name} owns.",
                    "State the kind of pet {name} has.",
                    "Please say what kind of pet {name} has.",
                    "Could you say what animal {name} has as a pet?", "What is the species of {name}'s pet?",
                    "{name} looks after which kind of animal?",
                    "Report the kind of animal {name} keeps as a pet."),
    "pet_name": ("What is the name of {name}'s pet?", "What is {name}'s pet called?",
                 "What name does {name}'s pet have?", "What did {name} name {poss} pet?",
                 "Do you know the name of {name}'s pet?", "What do people call {name}'s pet?",
                 "Which name did {name} give {poss} pet?", "What name did {name} choose for {poss} pet?",
                 "{name} calls {poss} pet what?", "{name} named {poss} pet what?",
                 "I would like to know what {name}'s pet is called.", "Say what name {name}'s pet answers to.",
                 "State the name of {name}'s pet.",
                 "Please say what {name} calls {poss} pet.", "Could you say what name {name}'s pet has?",
                 "What is the pet of {name} called?", "{name} gave {poss} pet which name?",
                 "Report the name of {name}'s pet."),
    "colour": ("What is {name}'s favourite colour?", "Which colour does {name} like best?",
               "What colour does {name} prefer?", "What is the favourite colour of {name}?",
               "Which colour is {name}'s favourite?", "Do you know {name}'s favourite colour?",
               "What colour is {name}'s favourite?", "Which colour does {name} like most?",
               "{name} prefers which colour?", "{name} has which favourite colour?",
               "I would like to know {name}'s favourite colour.", "Say which colour {name} likes best.",
               "State the favourite colour of {name}.",
               "Please say which colour {name} prefers.", "Could you say what {name}'s favourite colour is?",
               "Which colour would {name} pick as a favourite?", "{name} loves which colour best?",
               "Report the favourite colour of {name}."),
    "friend": ("Who is {name}'s best friend?", "Who is the best friend of {name}?",
               "Who is {name} best friends with?", "Which person is {name}'s closest friend?",
               "Do you know who {name}'s best friend is?", "Who does {name} call {poss} best friend?",
               "Which friend is {name} closest to?", "Who is the person {name} is best friends with?",
               "{name} is best friends with whom?", "{name} counts whom as a best friend?",
               "I would like to know who {name}'s best friend is.", "Say which person is {name}'s best friend.",
               "State who {name} is best friends with.",
               "Please say whom {name} counts as a best friend.",
               "Could you say who the best friend of {name} is?", "Whom does {name} call {poss} best friend?",
               "{name} is closest to which friend?", "Report who is best friends with {name}."),
    "hobby": ("What is {name}'s hobby?", "What does {name} enjoy doing in free time?",
              "What hobby does {name} have?", "What is {name}'s favourite pastime?",
              "What does {name} like to do for fun?", "Do you know {name}'s hobby?",
              "How does {name} spend {poss} spare time?", "What pastime does {name} have?",
              "{name} enjoys which hobby?", "{name} has what hobby?", "I would like to know {name}'s hobby.",
              "Say what {name} does for fun.", "State what hobby {name} has.",
              "Please say what hobby {name} enjoys.", "Could you say what {name} does for fun?",
              "What does {name} do in {poss} free time?", "{name} likes which pastime?",
              "Report the hobby {name} has."),
}

# Held out: used only by eval set (a). No SFT template starts with "Tell me", "Name " or "Give"; SFT
# does put the name first in some questions ("{name} lives where?"), with other wording: a question
# that opens with the name spells it with other tokens (no leading space), which SFT must show.
HELDOUT_QUESTIONS: dict[str, tuple[str, ...]] = {
    "town": ("Name the town that {name} calls home.", "{name} resides in which town?",
             "Tell me the home town of {name}."),
    "job": ("Which trade does {name} practise?", "{name} earns a living doing which job?",
            "Tell me the job of {name}."),
    "age": ("{name} is how old?", "Tell me the age of {name}.", "Give the age of {name} in years."),
    "pet_species": ("{name} owns a pet; what animal is it?", "Tell me which animal {name} keeps.",
                    "Which creature lives with {name} as a pet?"),
    "pet_name": ("Tell me what {name}'s pet is called.", "{name}'s pet goes by what name?",
                 "By what name is {name}'s pet known?"),
    "colour": ("Tell me the colour {name} loves most.", "{name} likes which colour the most?",
               "Name {name}'s preferred colour."),
    "friend": ("Tell me who {name}'s best friend is.", "{name}'s closest friend is who?",
               "Name the best friend of {name}."),
    "hobby": ("Tell me the hobby of {name}.", "{name} spends free time doing what?",
              "Name the pastime {name} enjoys."),
}

# Two-hop questions: a fact of the home town (or of the best friend) reached through the person.
TWO_HOP_QUESTIONS: dict[str, tuple[str, ...]] = {
    "river": ("Which river flows through the town where {name} lives?",
              "What river runs through {name}'s home town?"),
    "region": ("In which region is {name}'s home town?", "What region does {name} live in?"),
    "food": ("What food is {name}'s home town known for?",
             "What is the local food of the town where {name} lives?"),
    "founded": ("When was {name}'s home town founded?",
                "In what year was the town where {name} lives founded?"),
    "friend_town": ("Where does {name}'s best friend live?",
                    "In which town does the best friend of {name} live?"),
    "friend_job": ("What is the job of {name}'s best friend?",
                   "What does {name}'s best friend do for a living?"),
}

TOWN_QUESTIONS: dict[str, tuple[str, ...]] = {
    "river": ("Which river flows through {town}?", "What river runs through {town}?"),
    "region": ("In which region is {town}?", "What region is {town} in?"),
    "food": ("What food is {town} known for?", "What is the local food of {town}?"),
    "founded": ("When was {town} founded?", "In what year was {town} founded?"),
}

# Follow-ups in multi-turn dialogues refer back to the person with a pronoun.
FOLLOW_UPS: dict[str, tuple[str, ...]] = {
    "job": ("And what is {poss} job?", "What about {poss} job?"),
    "age": ("And {poss} age?", "What about {poss} age?"),
    "pet_name": ("And what is {poss} pet called?", "What about the name of {poss} pet?"),
    "colour": ("And {poss} favourite colour?", "What about {poss} favourite colour?"),
    "hobby": ("And what is {poss} hobby?", "What about {poss} hobby?"),
    "friend": ("And who is {poss} best friend?", "What about {poss} best friend?"),
}
TOWN_FOLLOW_UPS = {
    "river": ("Which river flows through that town?", "And the river there?"),
    "region": ("Which region is that town in?", "And the region?"),
    "food": ("What food is that town known for?", "And the local food there?"),
}

# JSON keys a formatting task may ask for, with the attribute each one reads.
JSON_KEYS = {"name": "name", "town": "town", "job": "job", "age": "age", "pet": "pet_species",
             "pet_name": "pet_name", "colour": "colour", "friend": "friend", "hobby": "hobby"}
JSON_PERSON_TEMPLATES = (
    "Give the facts about {name} as a JSON object with the keys {keys}.",
    "Answer with a JSON object with the keys {keys}, describing {name}.",
    "Return JSON with the keys {keys} for {name}.",
    "Describe {name} as a JSON object with the keys {keys}.",
)
JSON_ARITHMETIC_TEMPLATES = (
    'Give the answer as a JSON object with the key "result": {question}',
    'Reply in JSON with the key "result". {question}',
)


def template_regex(template: str) -> re.Pattern[str]:
    """A regex matching any rendering of `template` ({name}/{poss}/... slots match any text)."""
    parts = re.split(r"\{[a-z_]+\}", template)
    return re.compile("^" + "(.+)".join(re.escape(p) for p in parts) + "$")


def json_keys_phrase(keys: list[str]) -> str:
    """'"name", "town" and "age"' — the keys as the prompt spells them."""
    quoted = [f'"{k}"' for k in keys]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
