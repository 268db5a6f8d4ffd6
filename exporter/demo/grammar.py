"""Seeded sentence grammar of everyday dictation and voice commands (English and Spanish)."""

from __future__ import annotations

import functools
import random
import re

LANGUAGES = ("en", "es")
MIN_WORDS, MAX_WORDS = 3, 14  # sentence length range (about 1.5 to 5 s when spoken)

# A grammar is a weighted list of templates plus a table of slots.  A template is
# plain text with ``{slot}`` references; every slot is a list of fillers that may
# themselves contain slot references.  Empty fillers are allowed (optional words),
# whitespace is normalised after rendering.  Spanish contractions (del, al) are
# baked into derived slots so that the vocabulary is exactly the set of words in
# templates and fillers.
_SLOT = re.compile(r"\{(\w+)\}")
Grammar = tuple[list[tuple[int, str]], dict[str, list[str]]]

# ---------------------------------------------------------------- numbers (en)
_EN_SMALL = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
             "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_EN_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_EN_ORD = ("zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
           "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth").split()


def en_number(n: int) -> str:
    """Spell out 0..100 in English words."""
    if n == 100:
        return "one hundred"
    if n < 20:
        return _EN_SMALL[n]
    tens, unit = _EN_TENS[n // 10 - 2], n % 10
    return tens if unit == 0 else f"{tens} {_EN_SMALL[unit]}"


def en_ordinal(n: int) -> str:
    """Spell out the ordinals 1..31 (day of the month) in English words."""
    if n < 20:
        return _EN_ORD[n]
    tens, unit = _EN_TENS[n // 10 - 2], n % 10
    return tens[:-1] + "ieth" if unit == 0 else f"{tens} {_EN_ORD[unit]}"


# ---------------------------------------------------------------- numbers (es)
_ES_SMALL = ("cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince "
             "dieciséis diecisiete dieciocho diecinueve veinte veintiuno veintidós veintitrés "
             "veinticuatro veinticinco veintiséis veintisiete veintiocho veintinueve").split()
_ES_TENS = "treinta cuarenta cincuenta sesenta setenta ochenta noventa".split()


def es_number(n: int, before_noun: bool = False) -> str:
    """Spell out 0..100 in Spanish; ``before_noun`` shortens uno to un (veintiún grados)."""
    if n == 100:
        return "cien"
    if n < 30:
        word = _ES_SMALL[n]
    else:
        tens, unit = _ES_TENS[n // 10 - 3], n % 10
        word = tens if unit == 0 else f"{tens} y {_ES_SMALL[unit]}"
    if before_noun and word.endswith("uno"):
        word = "veintiún" if word == "veintiuno" else word[:-1]
    return word


def _es_contract(prep: str, phrase: str) -> str:
    """Join a preposition (de, a) to a noun phrase, contracting with the article el."""
    if phrase.startswith("el "):
        return ("del " if prep == "de" else "al ") + phrase[3:]
    return f"{prep} {phrase}"


# ---------------------------------------------------------------- English grammar
def _english() -> Grammar:
    hours = [en_number(h) for h in range(1, 13)]
    clocks = []
    for h in hours:
        clocks += [h, f"{h} oh five", f"{h} ten", f"{h} fifteen", f"{h} twenty", f"{h} thirty",
                   f"{h} forty", f"{h} forty five", f"{h} fifty",
                   f"half past {h}", f"quarter past {h}", f"quarter to {h}"]
    slots: dict[str, list[str]] = {
        "pre": ["", "", "", "", "please", "hey", "could you", "can you"],
        "post": ["", "", "", "", "please", "now", "for me"],
        "onoff": ["on", "off"],
        "room": ["kitchen", "living room", "bedroom", "bathroom", "hallway", "garage", "office",
                 "dining room", "garden", "basement", "attic", "kids room", "laundry room",
                 "guest room", "nursery", "study", "porch", "balcony"],
        "device": ["lights", "lights", "lamp", "fan", "heater", "radio", "television", "speaker",
                   "air conditioner", "coffee machine", "dishwasher", "washing machine", "oven"],
        "devsg": ["lamp", "fan", "heater", "radio", "television", "speaker", "air conditioner",
                  "oven", "fridge", "washing machine"],
        "state": ["on", "off", "still on", "broken", "too loud", "not working", "making a strange noise"],
        "colour": ["red", "blue", "green", "yellow", "orange", "purple", "pink", "white",
                   "warm white", "cool white", "turquoise", "gold"],
        "open": ["open", "close"],
        "openable": ["blinds", "curtains", "window", "door", "shutters"],
        "door": ["front door", "back door", "garage door"],
        "genre": ["jazz", "classical", "rock", "pop", "relaxing", "country", "dance", "quiet", "piano"],
        "updown": ["up", "down"],
        "person": ["anna", "david", "maria", "john", "sarah", "peter", "emma", "lucas", "mum", "dad",
                   "my brother", "my sister", "grandma", "the doctor", "the plumber", "my boss"],
        "callwhen": ["", "", "now", "on the speaker", "when i get home", "{time}", "{date}"],
        "task": ["call {person}", "buy {food}", "take out the rubbish", "water the plants",
                 "pay the electricity bill", "pick up the kids", "book a table for {count}",
                 "feed the cat", "send the report", "charge my phone", "check the oven"],
        "food": ["milk", "bread", "eggs", "apples", "rice", "coffee", "tomatoes", "cheese", "olive oil",
                 "sugar", "bananas", "soap", "toilet paper", "orange juice", "butter", "chicken",
                 "pasta", "yogurt"],
        "items": ["eggs", "apples", "bananas", "tomatoes", "lemons", "onions", "potatoes",
                  "bottles of water", "chairs", "tickets"],
        "msg": ["i am running late", "i am on my way", "dinner is ready", "i will be home {time}",
                "call me back", "see you {date}", "the meeting is {date}"],
        "event": ["meeting", "concert", "film", "train", "bus", "class", "appointment", "match",
                  "party", "flight", "lesson", "dentist appointment"],
        "thing": ["jacket", "umbrella", "chair", "bag", "lamp", "bicycle", "cup", "sofa", "scarf", "car"],
        "weekday": "monday tuesday wednesday thursday friday saturday sunday".split(),
        "month": ("january february march april may june july august september october "
                  "november december").split(),
        "ordinal": [en_ordinal(d) for d in range(1, 32)],
        "date": ["today", "tomorrow", "tonight", "this weekend", "next week", "the day after tomorrow",
                 "on {weekday}", "on {weekday}", "next {weekday}", "on {weekday} morning",
                 "on {weekday} evening", "on the {ordinal} of {month}", "on {month} {ordinal}"],
        "clock": clocks,
        "period": ["", "", "", "in the morning", "in the afternoon", "in the evening", "at night"],
        "time": ["at {clock} {period}"] * 12 + ["at noon", "at midnight"],
        "duration": [f"{en_number(n)} minutes" for n in range(2, 60)]
        + [f"{en_number(n)} hours" for n in range(2, 13)]
        + [f"{en_number(n)} seconds" for n in (10, 15, 20, 30, 45, 90)]
        + ["one minute", "an hour", "half an hour", "an hour and a half"] * 4,
        "temp": [f"{en_number(n)} degrees" for n in range(16, 31)],
        "percent": [f"{en_number(n)} percent" for n in (10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 100)],
        "count": [en_number(n) for n in range(2, 13)],
        "number": [en_number(n) for n in range(2, 100)],
        "digit": [en_number(n) for n in range(10)],
    }
    templates = [
        (4, "{pre} turn {onoff} the {room} {device} {post}"),
        (3, "{pre} switch {onoff} the {device} in the {room} {post}"),
        (2, "{pre} turn the {room} lights {colour} {post}"),
        (2, "{pre} set the {room} lights to {percent}"),
        (1, "{pre} dim the lights in the {room}"),
        (3, "{pre} set a timer for {duration}"),
        (2, "{pre} set an alarm for {clock} {date}"),
        (2, "wake me up {time} {date}"),
        (2, "{pre} set the thermostat to {temp}"),
        (2, "{pre} {open} the {openable} in the {room} {post}"),
        (1, "{pre} lock the {door}"),
        (2, "play some {genre} music in the {room}"),
        (1, "turn the volume {updown} {post}"),
        (3, "remind me to {task} {date}"),
        (2, "remind me to {task} {time}"),
        (2, "add {food} to the shopping list"),
        (2, "{pre} call {person} {callwhen}"),
        (2, "send a message to {person} saying {msg}"),
        (1, "what time is it"),
        (1, "what is the weather like {date}"),
        (1, "how long is left on the timer"),
        (1, "what is on my calendar {date}"),
        (3, "the {event} is {date}"),
        (2, "the {event} is {date} {time}"),
        (2, "the {event} starts {time}"),
        (2, "{person} arrives {time}"),
        (1, "{person} will call back {date}"),
        (2, "i will be home {time}"),
        (1, "dinner is ready"),
        (1, "dinner will be ready in {duration}"),
        (2, "it is {temp} in the {room}"),
        (2, "the {devsg} in the {room} is {state}"),
        (1, "i need {count} {items}"),
        (1, "there are {count} people in the {room}"),
        (1, "it costs {number} euros"),
        (1, "the bill is {number} dollars"),
        (1, "my code is {digit} {digit} {digit} {digit}"),
        (1, "my favourite colour is {colour}"),
        (1, "i bought a new {colour} {thing}"),
        (1, "the party for {person} is on the {ordinal} of {month}"),
        (1, "the {event} was moved to {weekday}"),
    ]
    return templates, slots


# ---------------------------------------------------------------- Spanish grammar
def _spanish() -> Grammar:
    rooms = ["el salón", "la cocina", "el dormitorio", "el baño", "el pasillo", "el garaje", "la oficina",
             "el comedor", "el jardín", "el sótano", "el despacho", "la terraza", "el balcón",
             "la entrada", "el cuarto de los niños", "la habitación de invitados", "el lavadero"]
    people = ["mi madre", "mi padre", "mi hermano", "mi hermana", "la abuela", "el abuelo", "ana",
              "carlos", "lucía", "javier", "elena", "pablo", "marta", "sofía", "el médico",
              "el fontanero", "mi jefe"]
    slots: dict[str, list[str]] = {
        "pre": ["", "", "", "", "por favor", "oye"],
        "post": ["", "", "", "", "por favor", "ahora", "ya"],
        "onoff": ["enciende", "apaga"],
        "de_room": [_es_contract("de", r) for r in rooms],
        "en_room": [f"en {r}" for r in rooms],
        "device": ["la luz", "la luz", "las luces", "la lámpara", "el ventilador", "la calefacción",
                   "la tele", "la televisión", "la radio", "el altavoz", "el aire acondicionado",
                   "el horno", "la cafetera", "el lavavajillas", "la lavadora", "la estufa"],
        "devsg": ["la lámpara", "el ventilador", "la calefacción", "la tele", "la radio", "el altavoz",
                  "el aire acondicionado", "el horno", "la lavadora", "la estufa", "la nevera"],
        "state": ["no funciona", "hace mucho ruido", "hace un ruido raro", "sigue encendido",
                  "lleva toda la noche en marcha", "necesita una revisión"],
        "colour": ["rojo", "azul", "verde", "amarillo", "naranja", "morado", "rosa", "blanco",
                   "blanco cálido", "blanco frío", "turquesa", "dorado"],
        "open": ["abre", "cierra"],
        "openable": ["las persianas", "las cortinas", "la ventana", "la puerta", "los toldos"],
        "door": ["la puerta principal", "la puerta de atrás", "la puerta del garaje"],
        "genre": ["clásica", "tranquila", "latina", "pop", "relajante", "de piano", "rock", "jazz",
                  "flamenca", "de los años ochenta"],
        "updown": ["sube", "baja"],
        "person": people,
        "a_person": [_es_contract("a", p) for p in people],
        "de_person": [_es_contract("de", p) for p in people],
        "callwhen": ["", "", "ahora", "por el altavoz", "cuando llegue a casa", "{time}", "{date}"],
        "task": ["llamar {a_person}", "comprar {food}", "sacar la basura", "regar las plantas",
                 "pagar la factura de la luz", "recoger a los niños", "reservar mesa para {count}",
                 "dar de comer al gato", "enviar el informe", "cargar el móvil", "revisar el horno"],
        "food": ["leche", "pan", "huevos", "manzanas", "arroz", "café", "tomates", "queso",
                 "aceite de oliva", "azúcar", "plátanos", "jabón", "papel higiénico",
                 "zumo de naranja", "mantequilla", "pollo", "pasta", "yogur"],
        "items": ["huevos", "manzanas", "plátanos", "tomates", "limones", "cebollas", "patatas",
                  "botellas de agua", "sillas", "entradas"],
        "msg": ["llego tarde", "ya voy de camino", "la cena está lista", "llego a casa {time}",
                "me llame luego", "nos vemos {date}", "la reunión es {date}"],
        "event": ["la reunión", "el concierto", "la película", "la clase", "el partido", "la fiesta",
                  "la cita con el dentista", "el vuelo", "el tren", "el autobús"],
        "thing": ["un paraguas", "un coche", "un sofá", "un bolso", "un jersey", "un abrigo",
                  "un sombrero"],
        "weekday": "lunes martes miércoles jueves viernes sábado domingo".split(),
        "month": ("enero febrero marzo abril mayo junio julio agosto septiembre octubre "
                  "noviembre diciembre").split(),
        "day": ["primero"] + [es_number(d) for d in range(2, 32)],
        "date": ["hoy", "mañana", "esta noche", "este fin de semana", "la semana que viene",
                 "pasado mañana", "mañana por la mañana", "el {weekday}", "el {weekday}",
                 "el próximo {weekday}", "el {weekday} por la mañana", "el {weekday} por la tarde",
                 "el {day} de {month}", "el {day} de {month}"],
        "hour": ["la una"] + [f"las {es_number(h)}" for h in range(2, 13)],
        "minute": ["", "", "y cinco", "y diez", "y cuarto", "y veinte", "y media", "y media",
                   "menos cuarto", "menos diez", "menos veinte", "en punto"],
        "period": ["", "", "", "de la mañana", "de la tarde", "de la noche"],
        "time": ["a {hour} {minute} {period}"] * 12 + ["al mediodía", "a medianoche"],
        "duration": [f"{es_number(n, True)} minutos" for n in range(2, 60)]
        + [f"{es_number(n, True)} horas" for n in range(2, 13)]
        + [f"{es_number(n, True)} segundos" for n in (10, 15, 20, 30, 45, 90)]
        + ["un minuto", "una hora", "media hora", "hora y media"] * 4,
        "temp": [f"{es_number(n, True)} grados" for n in range(16, 31)],
        "percent": [f"al {es_number(n)} por ciento" for n in (10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 100)],
        "count": [es_number(n) for n in range(2, 13)],
        "number": [es_number(n, True) for n in range(2, 100)],
        "digit": [es_number(n) for n in range(10)],
    }
    templates = [
        (4, "{pre} {onoff} {device} {de_room} {post}"),
        (2, "{pre} pon las luces {de_room} en {colour} {post}"),
        (2, "{pre} pon las luces {de_room} {percent}"),
        (1, "{pre} baja la intensidad de las luces {de_room}"),
        (3, "{pre} pon un temporizador de {duration}"),
        (2, "{pre} pon una alarma para {date} {time}"),
        (2, "despiértame {date} {time}"),
        (2, "{pre} pon la calefacción a {temp}"),
        (1, "sube el termostato a {temp}"),
        (2, "{pre} {open} {openable} {de_room} {post}"),
        (1, "{pre} cierra {door} con llave"),
        (2, "pon música {genre} {en_room}"),
        (1, "{updown} el volumen {post}"),
        (3, "recuérdame {task} {date}"),
        (2, "recuérdame {task} {time}"),
        (2, "añade {food} a la lista de la compra"),
        (2, "{pre} llama {a_person} {callwhen}"),
        (2, "manda un mensaje {a_person} diciendo que {msg}"),
        (1, "qué hora es"),
        (1, "qué tiempo hace {date}"),
        (1, "cuánto le queda al temporizador"),
        (1, "qué tengo en el calendario {date}"),
        (3, "{event} es {date}"),
        (2, "{event} es {date} {time}"),
        (2, "{event} empieza {time}"),
        (2, "{person} llega {time}"),
        (1, "{person} volverá a llamar {date}"),
        (2, "llegaré a casa {time}"),
        (1, "la cena está lista"),
        (1, "la cena estará lista en {duration}"),
        (2, "hace {temp} {en_room}"),
        (2, "{devsg} {de_room} {state}"),
        (1, "necesito {count} {items}"),
        (1, "hay {count} personas {en_room}"),
        (1, "cuesta {number} euros"),
        (1, "la cuenta son {number} euros"),
        (1, "mi código es {digit} {digit} {digit} {digit}"),
        (1, "mi color favorito es el {colour}"),
        (1, "me he comprado {thing} {colour}"),
        (1, "la fiesta {de_person} es el {day} de {month}"),
        (1, "{event} se ha cambiado al {weekday}"),
    ]
    return templates, slots


@functools.cache
def _grammar(lang: str) -> Grammar:
    if lang == "en":
        return _english()
    if lang == "es":
        return _spanish()
    raise ValueError(f"unsupported language {lang!r}; expected one of {LANGUAGES}")


def _render(text: str, slots: dict[str, list[str]], rng: random.Random, depth: int = 0) -> str:
    if depth > 4:
        raise RuntimeError(f"slot nesting too deep in {text!r}")
    return _SLOT.sub(lambda m: _render(rng.choice(slots[m.group(1)]), slots, rng, depth + 1), text)


def _sample(lang: str, rng: random.Random) -> str:
    """Draw one sentence, redrawing until its length is within MIN_WORDS..MAX_WORDS."""
    templates, slots = _grammar(lang)
    texts, weights = [t for _, t in templates], [w for w, _ in templates]
    while True:
        words = _render(rng.choices(texts, weights=weights)[0], slots, rng).split()
        if MIN_WORDS <= len(words) <= MAX_WORDS:
            return " ".join(words)


def sentences(lang: str, n: int, seed: int) -> list[str]:
    """Return ``n`` random sentences (duplicates allowed), deterministic for ``seed``."""
    rng = random.Random(f"{lang}:{seed}")
    return [_sample(lang, rng) for _ in range(n)]


def split(lang: str, n_train: int, n_test: int, seed: int) -> tuple[list[str], list[str]]:
    """Training sentences plus distinct held-out test sentences that never occur in training."""
    train = sentences(lang, n_train, seed)
    seen = set(train)
    rng = random.Random(f"{lang}:{seed}:heldout")
    test: list[str] = []
    for _ in range(50 * n_test + 1000):
        if len(test) == n_test:
            break
        s = _sample(lang, rng)
        if s not in seen:
            seen.add(s)
            test.append(s)
    if len(test) < n_test:
        raise RuntimeError(f"could only find {len(test)} unseen {lang} test sentences of {n_test}")
    assert not set(test) & set(train), "held-out sentence leaked into training"
    return train, test


# The demo recipe's split (exporter/demo/train.py defaults). Evaluation, tests and benchmarks take their
# held-out sentences from here so that they never overlap the demo model's training sentences.
DEMO_TRAIN_SENTENCES = 8000
DEMO_HELDOUT_SENTENCES = 60
DEMO_VALIDATION_SENTENCES = 140
DEMO_SEED = 0


def demo_heldout(lang: str) -> list[str]:
    """The demo model's held-out sentences for ``lang`` (never in its training set)."""
    return split(lang, DEMO_TRAIN_SENTENCES, DEMO_HELDOUT_SENTENCES, DEMO_SEED)[1]


def demo_validation(lang: str) -> list[str]:
    """Further unseen sentences for choosing among training runs, so the held-out test set is never used to
    choose: neither in training nor in ``demo_heldout(lang)``."""
    n = DEMO_HELDOUT_SENTENCES + DEMO_VALIDATION_SENTENCES
    return split(lang, DEMO_TRAIN_SENTENCES, n, DEMO_SEED)[1][DEMO_HELDOUT_SENTENCES:]


@functools.cache
def _vocabulary(lang: str) -> frozenset[str]:
    templates, slots = _grammar(lang)
    texts = [t for _, t in templates] + [f for fillers in slots.values() for f in fillers]
    return frozenset(w for t in texts for w in _SLOT.sub(" ", t).split())


def vocabulary(lang: str) -> set[str]:
    """Every word the grammar of ``lang`` can produce (at least 150 of them)."""
    words = set(_vocabulary(lang))
    assert len(words) >= 150, f"{lang} vocabulary too small: {len(words)} words"
    return words
