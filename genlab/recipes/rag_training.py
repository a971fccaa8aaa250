"""The speedrun's RAG fine-tune: context-question-answer chats, a copying warm-up, and the tuning run.

Handbook V (retrieval-augmented generation); Lewis et al. 2020, "Retrieval-Augmented Generation for
Knowledge-Intensive NLP Tasks"; Olsson et al. 2022, "In-context Learning and Induction Heads".

* `rag_sft_conversations(world, n, seed)`: chats in exactly the prompt format
  `genlab.retrieval.rag.build_prompt` renders at answer time (numbered sources, then the question). The
  sources describe made-up people drawn by the world's name maker from a separate stream that refuses
  every name the world already uses, so no private person (nor anyone else in the world) leaks into
  training. Each prompt puts the right document among distractors (often the subject's best friend,
  whose document also names the subject), first half the time as a retriever would, else anywhere; a
  share of questions asks about someone absent from the sources, answered with "I don't know."
  The reply is worked: it quotes the fact's record-card line, then answers and cites
  ("Occupation: fisher. Answer: fisher [2]", see `cite`).
* `copy_conversations(world, n, seed)`: "Repeat: Shava, potter, Dalbo Bemrenen" -> the same list.
* `rag_finetune(model, tokenizer, world, config)`: SFT on both (the speedrun's retrieval stage runs it
  on a copy of the SFT model before scoring the RAG bar in `rag_stage`).

Why the quote and the warm-up: the world teaches a model to answer every question from memory, so it never
needs to copy from its context, and an SFT model fine-tuned on plain "Answer: fisher [1]" replies still
guessed from memory (private questions: 6% after 300 steps, 19% after 1,000 and 2,000). Quoting the card
line turns the lookup into the pattern an induction head completes (the tokens after an earlier
"Occupation:"), and the repeat chats reward exactly that copying; with both, 800 steps reached 59%, and the
default 1,600 steps (titled documents, SFT replay) 84% (every fact but the friend's name, which is 0/21: the first
word piece of a made-up name is still guessed).

    python -m pytest -q tests/recipes/test_rag_stage.py
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from genlab.data.chat import END
from genlab.data.world import IDK_ANSWER, World, questions, sft_conversations, vocab
from genlab.data.world.entities import NameMaker, make_group  # the world's own generators, new stream
from genlab.data.world.extras import card_line, profile_document  # the private documents' shapes and lines
from genlab.data.world.worked import ANSWER_MARK
from genlab.errors import ConfigError
from genlab.finetune.sft import SFTDataset, sft_train_config
from genlab.retrieval.knowledge import Hit
from genlab.retrieval.rag import COMPACT_PROMPT_TEMPLATE, RAGConfig, build_prompt
from genlab.train.trainer import train

# Question attributes of the RAG chats: names are copied piece by piece (a made-up name is 4-6 BPE pieces), the
# hardest part, so the friend's and the pet's names are asked twice as often as the other facts.
_QUESTION_ATTRIBUTES = questions.FACT_ATTRIBUTES + ("friend", "pet_name")
# Source labels of training documents: the id is only a header, so vary it (eval ids read "private-0012").
_ID_PREFIXES = ("doc", "record", "profile", "card", "note", "entry", "private", "lookup", "file")


def cite(answer: str, source_number: int, quote: str | None = None) -> str:
    """The cited reply the RAG conversations teach: "Occupation: fisher. Answer: fisher [2]" (quote given),
    else "Answer: fisher [2]".

    The quote is the fact's record-card line, so the value follows the same tokens as in a card source and
    an induction head can copy it. The "Answer:" lead keeps the value's leading space, so the reply spells it
    with the same BPE tokens as the source ("Home town: Wuby"); a reply that opens with the value spells it
    with others ("W" "uby"), and copying a name never seen in training then fails.
    """
    return f"{quote + '. ' if quote else ''}{ANSWER_MARK} {answer} [{source_number}]"


def _made_up_people(world: World, n: int, rng: random.Random) -> list:
    """`n` (even) people with world towns, invented by the name maker from a separate stream.

    The maker refuses every word already used by any world name (people, pets, towns, rivers,
    private, lookup and made-up "I don't know" names), so none of them can reappear here.
    """
    names = NameMaker(rng)
    taken = world.all_names() + [p.pet_name for p in world.people + world.private_people + world.lookup_people]
    taken += [t.name for t in world.towns] + [t.river for t in world.towns]
    names.used |= {word.lower() for name in taken for word in name.split()}
    return make_group(n + n % 2, "rag", world.towns, rng, names)


def _question(rng: random.Random, person, attr: str) -> str:
    template = rng.choice(questions.SFT_QUESTIONS[attr])
    return template.format(name=person.name, poss=vocab.PRONOUNS[person.pronoun][2])


def _hit(n: int, source: str, text: str) -> Hit:
    return Hit(chunk_id=n, doc_id=n, source=source, text=text, score=0.0, start=0, end=len(text), metadata={})


def rag_sft_conversations(world: World, n: int, seed: int, k: int = 3, idk_rate: float = 0.1,
                          friend_rate: float = 0.5, first_rate: float = 0.5, follow_ups: int = 0,
                          template: str = COMPACT_PROMPT_TEMPLATE, worked: bool = True) -> list[dict[str, Any]]:
    """`n` chats [{"messages": [user, assistant, ...], "kind": "rag" | "rag_idk"}].

    The user turn is `build_prompt(question, sources)` in `template`'s layout with k sources (a fifth of
    prompts use fewer, as a prompt trimmed to fit the context would); the assistant turn is
    `cite(fact, position, card line if worked)`, or `IDK_ANSWER` when no source is about the person asked
    (share `idk_rate`). With probability `friend_rate` one distractor is the subject's best friend, whose
    document also names the subject. The right source is first with probability `first_rate` (a retriever
    ranks it first most of the time: hybrid search does for all 150 private questions), else at a
    uniformly random position. `follow_ups` extra turns "Question: ...\\nAnswer:" ask about the people in the
    same sources (or, at `idk_rate`, someone absent): each costs ~40 tokens instead of a whole new prompt,
    so reading the sources gets several trained answers per prompt. (With k = 1 and 3 follow-ups a chat is ~320
    tokens; a 256-token row keeps the prompt and the first two or three answers.)
    """
    if n < 0 or k < 1 or follow_ups < 0:
        raise ConfigError(f"rag_sft_conversations needs n >= 0, k >= 1 and follow_ups >= 0, got n={n}, k={k}, "
                          f"follow_ups={follow_ups}")
    if not all(0 <= rate <= 1 for rate in (idk_rate, friend_rate, first_rate)):
        raise ConfigError("idk_rate, friend_rate and first_rate must lie in [0, 1]")
    rng = random.Random(f"genlab-rag-sft:{world.config.seed}:{seed}")
    people = _made_up_people(world, max(n, 4 * k + 4), rng)
    by_name = {p.name: i for i, p in enumerate(people)}
    docs = []
    for person in people:
        doc_id = f"{rng.choice(_ID_PREFIXES)}-{rng.randrange(10_000):04d}"
        docs.append((doc_id, profile_document(world, person, rng, doc_id)))

    def reply(person, attr: str, number: int) -> str:
        return cite(person.fact(attr), number, card_line(world, person, attr) if worked else None)

    out = []
    for i in range(n):
        subject = i % len(people)
        n_sources = k if k == 1 or rng.random() < 0.8 else rng.randint(1, k - 1)
        absent = rng.random() < idk_rate
        others = [j for j in rng.sample(range(len(people)), min(len(people), n_sources + 2)) if j != subject]
        friend = by_name[people[subject].friend]
        if rng.random() < friend_rate:
            others = [friend] + [j for j in others if j != friend]
        chosen = others[:n_sources] if absent else others[:n_sources - 1]
        rng.shuffle(chosen)
        position = None
        if not absent:
            position = 0 if rng.random() < first_rate else rng.randrange(n_sources)
            chosen.insert(position, subject)
        attr = rng.choice(_QUESTION_ATTRIBUTES)
        hits = [_hit(j, *docs[j]) for j in chosen]
        prompt = build_prompt(_question(rng, people[subject], attr), hits,
                              RAGConfig(k=max(1, len(hits)), template=template))
        answer = IDK_ANSWER if absent else reply(people[subject], attr, position + 1)
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        for _ in range(follow_ups):
            if rng.random() < idk_rate:  # someone who is in none of the sources
                person = people[rng.choice([j for j in others[n_sources:] + [subject] if j not in chosen] or [subject])]
                if subject in chosen and person is people[subject]:
                    continue
                attr, answer = rng.choice(_QUESTION_ATTRIBUTES), IDK_ANSWER
            else:  # every profile states every fact
                number = rng.randrange(len(chosen))
                person, attr = people[chosen[number]], rng.choice(_QUESTION_ATTRIBUTES)
                answer = reply(person, attr, number + 1)
            messages += [{"role": "user", "content": f"Question: {_question(rng, person, attr)}\nAnswer:"},
                         {"role": "assistant", "content": answer}]
        out.append({"messages": messages, "kind": "rag_idk" if absent else "rag"})
    return out


def copy_conversations(world: World, n: int, seed: int, min_items: int = 3, max_items: int = 8) -> list[dict[str, Any]]:
    """`n` chats "Repeat: Shava, potter, Dalbo Bemrenen, 45" -> "Shava, potter, Dalbo Bemrenen, 45" ("kind": "copy").

    The items are made-up people's names and facts (never a world name), so only copying from the context
    can predict them: the warm-up that grows the induction heads RAG answers need.
    """
    if n < 0 or not 1 <= min_items <= max_items:
        raise ConfigError(f"copy_conversations needs n >= 0 and 1 <= min_items <= max_items, got {n}, "
                          f"{min_items}, {max_items}")
    rng = random.Random(f"genlab-rag-copy:{world.config.seed}:{seed}")
    people = _made_up_people(world, 400, rng)
    words = [str(x) for p in people for x in (p.name, p.pet_name, p.job, p.colour, p.hobby, p.age, p.town,
                                               p.pet_species)]
    out = []
    for _ in range(n):
        items = ", ".join(rng.sample(words, rng.randint(min_items, max_items)))
        out.append({"messages": [{"role": "user", "content": f"Repeat: {items}"},
                                 {"role": "assistant", "content": items}], "kind": "copy"})
    return out


@dataclass
class RagTuneConfig:
    steps: int = 1600
    batch_size: int = 8
    lr: float = 2e-3
    # RAG chats (one per packed row at k = 1) and repeat chats (~5 per row); None: 7.5 and 10 per step, so the
    # run makes about one pass with a fifth of its rows repeat chats.
    conversations: int | None = None
    copy_conversations: int | None = None
    follow_ups: int = 3  # more questions on the same sources in each RAG chat
    k: int = 1  # sources per training prompt: as many as the answer-time prompt holds
    sft_replay: bool = True  # the world's SFT chats join the mix (~7% of rows), so the model still chats
    seed: int = 0

    def __post_init__(self) -> None:
        if self.conversations is None:
            self.conversations = max(8, self.steps * 15 // 2)
        if self.copy_conversations is None:
            self.copy_conversations = self.steps * 10
        if self.steps < 1 or self.conversations < 1 or self.copy_conversations < 0:
            raise ConfigError(f"the RAG fine-tune needs steps >= 1, conversations >= 1 and copy_conversations >= 0, "
                              f"got {self.steps}, {self.conversations}, {self.copy_conversations}")


def rag_finetune(model, tokenizer, world: World, config: RagTuneConfig | None = None, run_dir: str | Path | None = None,
                 callback: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """Fine-tune `model` in place on RAG chats, repeat chats and (sft_replay) the world's SFT chats (packed, loss
    on the replies only)."""
    cfg, start = config or RagTuneConfig(), time.perf_counter()
    chats = rag_sft_conversations(world, cfg.conversations, cfg.seed, k=cfg.k, follow_ups=cfg.follow_ups)
    chats += copy_conversations(world, cfg.copy_conversations, cfg.seed)
    if cfg.sft_replay:
        chats += sft_conversations(world)
    data = SFTDataset(chats, tokenizer, model.config.max_seq_len, seed=cfg.seed, pad_id=tokenizer.special_tokens[END])
    train_cfg = sft_train_config(cfg.steps, cfg.batch_size, model.config.max_seq_len, cfg.lr, cfg.seed,
                                 None if run_dir is None else str(run_dir), resume=False)
    result = train(model, data, train_cfg, callback=callback)
    model.eval()
    return {"config": asdict(cfg), "rows": len(data), "steps": result.steps, "first_loss": result.losses[0],
            "final_loss": result.losses[-1],
            "seconds": round(time.perf_counter() - start, 1)}
