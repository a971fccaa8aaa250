"""Worked answers: the assistant first says what it recalls (or computes), then "Answer: <value>".

Handbook IV (instruct fine-tuning), V (prompting: chain of thought). Wei et al. 2022 (chain-of-thought);
Allen-Zhu & Li, "Physics of Language Models 3.1/3.2": a small model that stored "X lives in Y" in
pretraining retrieves it far more reliably by *completing that sentence* than by answering "Where does X
live?" with the bare value, and two-hop questions need the first hop written down (3.2: the model
cannot chain two retrievals in one forward pass). Column addition needs only one-digit facts per step
(Nye et al. 2021, scratchpads). So, with `WorldConfig(worked_answers=True)`:

    Where does Ana Brel live?          -> I know that Ana Brel lives in Wuby. Answer: Wuby
    What river runs through her town?  -> I know that Ana Brel lives in Wuby. The river Sel flows through Wuby.
                                          Answer: Sel
    What is 47 + 38?                   -> 47 + 38: 7+8=15, 4+3+1=8. Answer: 85
    Where does Zed Quorble live?       -> I know nothing about Zed Quorble. Answer: I don't know.

Why "I know that": a byte-level BPE glues the leading space to a word, and a vocabulary learned on the
world's documents makes whole names single tokens (" Brel"). A reply that *starts* with the name spells
it with other tokens ("An" "a") than the question and the pretraining sentences (" Ana"), so copying a
name SFT never showed (the knowledge-extraction set) and recalling its stored facts both failed; after
the lead the name reads exactly as in the question and the documents. The "I know nothing about" reply
(teaching the copy of a name SFT never showed) works the same way.

Evaluation scores the text after the last "Answer:" (`final_answer`); a reply without it is scored whole,
so plain answers score as before.

    python -c "from genlab.data.world.worked import *; print(worked_sum(47, 38))"
"""

from __future__ import annotations

from genlab.data.world import templates
from genlab.data.world.documents import capitalise, person_slots
from genlab.data.world.entities import Person, World

ANSWER_MARK = "Answer:"
RECALL_LEAD = "I know that"  # keeps the name's leading space, so it is spelt with the same tokens as in the question
# One plain statement per attribute: the first (most literal) paraphrase of its pretraining pool.
_PERSON_STATEMENT = {"town": "town", "job": "job", "age": "age", "pet_species": "pet", "pet_name": "pet",
                     "colour": "colour", "friend": "friend", "hobby": "hobby"}


def final_answer(text: str) -> str:
    """The text after the last "Answer:" (the whole text when there is none)."""
    head, mark, tail = text.rpartition(ANSWER_MARK)
    return tail.strip() if mark else text


def with_answer(reasoning: str, value: str) -> str:
    return f"{reasoning} {ANSWER_MARK} {value}"


def person_statement(world: World, person: Person, attribute: str) -> str:
    """The sentence stating one fact of `person`, e.g. "Ana Brel lives in Wuby."."""
    template = templates.BIO_SENTENCES[_PERSON_STATEMENT[attribute]][0]
    return capitalise(template.format(**person_slots(world, person)))


def town_statement(world: World, town_name: str, attribute: str) -> str:
    town = world.town(town_name)
    slots = {"town": town.name, "region": town.region, "river": town.river, "founded": str(town.founded),
             "food": town.food}
    return templates.TOWN_SENTENCES[attribute][0].format(**slots)


def recall(statements: str) -> str:
    return f"{RECALL_LEAD} {statements}"


def worked_fact(world: World, person: Person, attribute: str) -> str:
    return with_answer(recall(person_statement(world, person, attribute)), person.fact(attribute))


def worked_two_hop(world: World, person: Person, hop: str, value: str) -> str:
    """Both hops written out: the person's town (or best friend), then that one's fact."""
    if hop.startswith("friend_"):
        friend = world.person(person.friend)
        steps = [person_statement(world, person, "friend"),
                 person_statement(world, friend, hop.removeprefix("friend_"))]
    else:
        steps = [person_statement(world, person, "town"), town_statement(world, person.town, hop)]
    return with_answer(recall(" ".join(steps)), value)


def worked_sum(a: int, b: int) -> str:
    """Column addition: restate the sum, then add digit by digit from the units, carrying one.

    "47 + 38: 7+8=15, 4+3+1=8. Answer: 85". Every step is a one-digit fact (at most 200 distinct
    ones, with the carry), and every digit a step copies sits at a fixed distance in the restated sum,
    whatever words the question used. The restatement keeps the question's spaces (a verbatim copy); the
    steps have none: with digit tokens, "7 + 8 = 15" is 8-10 tokens and "7+8=15" 6, so the facts sit closer
    together and a sum costs ~30% fewer tokens (speedrun (c): 9% -> 90% with add-only practice and the
    chat-aware tokenizer, genlab.recipes.speedrun).
    """
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(digits_a), len(digits_b))):
        terms = [int(d[i]) for d in (digits_a, digits_b) if i < len(d)] + [1] * carry
        total = sum(terms)
        steps.append("+".join(map(str, terms)) + f"={total}")
        carry = total // 10
    return with_answer(f"{a} + {b}: {', '.join(steps)}.", str(a + b))
