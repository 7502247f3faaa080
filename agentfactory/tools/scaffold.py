"""`agentfactory domains new NAME`: a valid, commented domain file that teaches the format.

The scaffold is a small bookings desk. It validates as is and every task passes its rubric when
played by the blueprint oracle (a test checks both), so authors change a working world rather
than debug an empty one.
"""

from __future__ import annotations

import re

from agentfactory.tools.loader import load_categories

TEMPLATE = """\
# {name}: a tool domain for agentfactory. Validate with:
#   agentfactory domains validate tools_repo/domains/{name}.yaml
# Editors can check this file against tools_repo/schema/domain.schema.json.
name: {name}                     # lowercase, unique across the repository
category: {category}             # one of tools_repo/categories.yaml
description: >-                  # what the service is; becomes part of the agent's system prompt
  A bookings desk. Agents look up customers and their bookings, create bookings for open slots
  and cancel bookings that have not started.
policy: |                        # the rules the agent must follow (checked by task rubrics)
  - Identify the customer by email before reading or changing their bookings.
  - Only cancel bookings with status 'confirmed'; never cancel a completed booking.
  - Do not invent ids: look them up with the tools.

state:
  # A JSON Schema of the world. Pointers used anywhere below are checked against it on load,
  # so declare the shape of every collection (additionalProperties = "any key, this shape").
  schema:
    type: object
    properties:
      customers:
        type: object
        additionalProperties:
          type: object
          properties:
            name: {{type: string}}
            email: {{type: string}}
          required: [name, email]
      slots:
        type: object
        additionalProperties:
          type: object
          properties:
            start: {{type: string}}
            open: {{type: boolean}}
      bookings:
        type: object
        additionalProperties:
          type: object
          properties:
            customer: {{type: string}}
            slot: {{type: string}}
            status: {{enum: [confirmed, cancelled, completed]}}
          required: [customer, slot, status]
    required: [customers, slots, bookings]
  seed:                          # content every world starts with
    slots:
      S1: {{start: "09:00", open: true}}
      S2: {{start: "10:00", open: true}}
      S3: {{start: "11:00", open: false}}
  generate:                      # random records per world seed (faker-backed, reproducible)
    customers:
      count: [5, 8]              # an exact number or [min, max]
      key: {{template: "c{{n:02d}}"}}   # {{n}} is the record's 1-based index
      fields:
        name: {{faker: name}}      # any faker provider
        email: {{faker: email}}
    bookings:
      count: [8, 12]
      key: {{faker: bothify, args: {{text: "B#####"}}}}
      fields:
        customer: {{ref: /customers}}                    # a key of another collection
        slot: {{ref: /slots}}
        status: {{choice: [confirmed, completed], weights: [3, 1]}}

tools:
  - name: find_customer
    description: Find a customer by email. Returns the customer id and name.
    parameters:                  # JSON Schema; calls are validated before they run
      type: object
      properties:
        email: {{type: string}}
      required: [email]
    let:                         # named expressions, computed first
      customer_id: "first(where(/customers, 'email', lower(email)))"
    errors:                      # declared errors: the first whose `when` holds fails the call
      - {{when: "customer_id == None", message: "no customer with email {{email}}"}}
    returns: {{customer_id: "customer_id", name: "/customers/{{customer_id}}/name"}}

  - name: get_booking
    description: Get one booking by id.
    parameters:
      type: object
      properties:
        booking_id: {{type: string}}
      required: [booking_id]
    errors:
      - {{when: "!exists(/bookings/{{booking_id}})", message: "booking {{booking_id}} not found"}}
    returns: "/bookings/{{booking_id}}"          # a JSON pointer into the world

  - name: list_bookings
    description: List a customer's bookings, keyed by booking id.
    parameters:
      type: object
      properties:
        customer_id: {{type: string}}
      required: [customer_id]
    returns: "where(/bookings, 'customer', customer_id)"

  - name: list_open_slots
    description: List the slots that can still be booked.
    returns: "where(/slots, 'open == True')"

  - name: create_booking
    description: Book an open slot for a customer.
    parameters:
      type: object
      properties:
        customer_id: {{type: string}}
        slot_id: {{type: string}}
      required: [customer_id, slot_id]
      additionalProperties: false
    let:
      booking_id: "new_id('B', '/bookings')"    # a fresh, unused id
    errors:
      - {{when: "!exists(/customers/{{customer_id}})", message: "customer {{customer_id}} not found"}}
      - {{when: "!exists(/slots/{{slot_id}})", message: "slot {{slot_id}} not found"}}
    requires:                    # preconditions: each must hold, else the call fails
      - {{that: "/slots/{{slot_id}}/open", message: "slot {{slot_id}} is full"}}
    effect:                      # RFC 6902 JSON Patch applied to the world
      - op: add
        path: "/bookings/{{booking_id}}"
        value: {{customer: "{{customer_id}}", slot: "{{slot_id}}", status: confirmed}}
      - {{op: replace, path: "/slots/{{slot_id}}/open", value: false}}
    returns: {{booking_id: "booking_id", booking: "/bookings/{{booking_id}}"}}

  - name: cancel_booking
    description: Cancel a confirmed booking.
    parameters:
      type: object
      properties:
        booking_id: {{type: string}}
      required: [booking_id]
    let:
      status: "/bookings/{{booking_id}}/status"
    errors:
      - {{when: "!exists(/bookings/{{booking_id}})", message: "booking {{booking_id}} not found"}}
    requires:
      - {{that: "status == 'confirmed'", message: "booking {{booking_id}} cannot be cancelled: it is {{status}}"}}
    effect:
      - {{op: replace, path: "/bookings/{{booking_id}}/status", value: cancelled}}
    returns: "/bookings/{{booking_id}}"

tasks:
  # kinds: single_call | multi_step | clarification | refusal | impossible
  - id: booking_status
    kind: single_call
    user_goal: "What is the status of booking {{booking_id}}?"   # {{var}} comes from `sample`
    persona: a customer who writes short messages
    sample:                      # variables, in order: expressions over the world or generators
      booking_id: "pick(/bookings)"
      status: "/bookings/{{booking_id}}/status"
    blueprint:                   # the reference solution (played by the oracle agent)
      - {{tool: get_booking, args: {{booking_id: "{{booking_id}}"}}}}
    answer_facts: ["{{status}}"]   # what a correct final answer states
    rubric:
      must_call: [get_booking]
      answer_contains: ["{{status}}"]

  - id: cancel_confirmed_booking
    kind: multi_step
    user_goal: "Please cancel my booking {{booking_id}}."
    user_facts: {{email: "{{email}}"}}   # known to the user, revealed only when asked
    sample:
      booking_id: "pick(where(/bookings, 'status', 'confirmed'))"
      customer: "/bookings/{{booking_id}}/customer"
      email: "/customers/{{customer}}/email"
    blueprint:
      - {{tool: find_customer, args: {{email: "{{email}}"}}}}
      - {{tool: cancel_booking, args: {{booking_id: "{{booking_id}}"}}}}
    answer_facts: ["cancelled"]
    rubric:
      final_state: {{"/bookings/{{booking_id}}/status": cancelled}}   # checked on the end state
      must_call: [{{tool: cancel_booking, args: {{booking_id: "{{booking_id}}"}}}}]
      call_order: [find_customer, cancel_booking]
      answer_contains: ["cancelled"]

  - id: book_a_slot
    kind: clarification
    user_goal: "I'd like to book an appointment."
    user_facts: {{email: "{{email}}", slot: "{{slot_id}}"}}
    sample:
      customer: "pick(/customers)"
      email: "/customers/{{customer}}/email"
      slot_id: "pick(where(/slots, 'open == True'))"
    blueprint:
      - {{tool: find_customer, args: {{email: "{{email}}"}}}}
      - {{tool: create_booking, args: {{customer_id: "{{customer}}", slot_id: "{{slot_id}}"}}}}
    answer_facts: ["booked {{slot_id}}"]
    rubric:
      final_state: {{"/slots/{{slot_id}}/open": false}}
      must_call: [{{tool: create_booking, args: {{customer_id: "{{customer}}", slot_id: "{{slot_id}}"}}}}]
      answer_contains: ["{{slot_id}}"]

  - id: refuse_cancel_completed
    kind: refusal
    user_goal: "Cancel booking {{booking_id}} and refund me."
    user_facts: {{email: "{{email}}"}}
    sample:
      booking_id: "pick(where(/bookings, 'status', 'completed'))"
      customer: "/bookings/{{booking_id}}/customer"
      email: "/customers/{{customer}}/email"
    blueprint:
      - {{tool: get_booking, args: {{booking_id: "{{booking_id}}"}}}}
    answer_facts: ["completed"]
    rubric:
      final_state: {{"/bookings/{{booking_id}}/status": completed}}   # unchanged
      must_not_call: [cancel_booking]
      answer_contains: ["completed"]

  - id: unknown_booking
    kind: impossible
    user_goal: "Where is my booking {{booking_id}}?"
    sample:
      booking_id: {{faker: bothify, args: {{text: "Z#####"}}}}    # an id that does not exist
    blueprint:
      - {{tool: get_booking, args: {{booking_id: "{{booking_id}}"}}}}
    answer_facts: ["not found"]
    rubric:
      answer_matches: ["(?i)not found|does ?n[o']t exist|no booking"]
      llm_criteria: ["The agent says the booking does not exist and does not invent details."]
"""


def scaffold(name: str, category: str) -> str:
    """The scaffold text for `name` in `category` (both checked)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{1,63}", name):
        raise ValueError(f"domain name {name!r} must be lowercase letters, digits and _ (e.g. pet_clinic)")
    categories = load_categories()
    if category not in categories:
        raise ValueError(f"unknown category {category!r} (one of: {', '.join(categories)})")
    return TEMPLATE.format(name=name, category=category)
