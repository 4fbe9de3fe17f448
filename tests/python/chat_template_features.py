"""Chat templates written for the test set (not copied from a model): each exercises a group of the Jinja
features real templates use, so check_chat_templates.py compares libloratune with transformers on each
feature in isolation as well as inside the real templates. The conversations of check_chat_templates.py
render through every one of them."""

FEATURE_TEMPLATES = {
    # macros: positional, keyword, defaults, varargs / kwargs, starred and double-starred calls
    "macros": r"""
{%- macro render(role, content, prefix='<', suffix='>', upper=false) -%}
{{ prefix }}{{ role|upper if upper else role }}{{ suffix }}{{ content }}
{%- endmacro -%}
{%- macro joinall(sep) -%}{{ varargs|join(sep) }}{% if kwargs %}|{{ kwargs|dictsort|map('join', '=')|join(',') }}{% endif %}{%- endmacro -%}
{%- set params = ['x', 'y'] -%}
{%- set opts = {'prefix': '[', 'suffix': ']'} -%}
{%- for m in messages -%}
{{ render(m.role, m.content if m.content is string else 'parts') }}
{{ render(m.role, 'k', suffix='}', prefix='{', upper=loop.first) }}
{{ render(*params) }}{{ render(m.role, '!', **opts) }}
{{ joinall('-', 'a', m.role, loop.index, z=1, a=2) }}
{% endfor -%}
{{ joinall(',') }}{{ render('end', '') }}
""",
    # caller and call blocks, with and without arguments; a macro passed as a value
    "call-blocks": r"""
{%- macro box(title) -%}
[{{ title }}: {{ caller() }}]
{%- endmacro -%}
{%- macro each(items) -%}
{%- for it in items %}{{ caller(it, loop.index) }}{% if not loop.last %}, {% endif %}{% endfor -%}
{%- endmacro -%}
{%- macro apply(f, x) -%}{{ f(x) }}{%- endmacro -%}
{%- macro shout(x) -%}{{ x|upper }}!{%- endmacro -%}
{%- call box('chat') -%}
{{ messages|length }} messages
{%- endcall %}
{% call(m, i) each(messages) %}{{ i }}:{{ m.role }}{% endcall %}
{{ apply(shout, messages[0].role) }} {{ shout is callable }} {{ box.name }}
""",
    # filter blocks, set blocks with filters, with blocks, raw blocks, comments, whitespace control
    "blocks": r"""
{%- filter upper -%}
{% for m in messages %}{{ m.role }} {% endfor %}
{%- endfilter %}
{% filter replace('a', '@') | trim %}  {{ messages[0].role }} and more  {% endfilter %}
{%- set header | indent(2, true) -%}
first line
second line

fourth line
{%- endset %}
{{ header }}
{% with n = messages|length, first = messages[0] %}{{ n }} {{ first.role }}{% endwith %}
{{ n is defined }}
{% raw %}{{ not rendered }} {% if %}{% endraw %}
{#- a comment -#}
   {%+ if true %}kept spaces{% endif %}
   {% if true -%}   stripped   {%- endif %}
x {{- ' y ' -}} z
""",
    # multi-line string literals, escapes, adjacent literals
    "strings": r"""
{%- set doc = 'first line
second line with "quotes" and \'escapes\'
\ttab \u00e9 \x41 \U0001F600 \\ \101' -%}
{{ doc }}
{{- "

two newlines" "adjacent" 'literals' }}
{{ '{{ not a tag }}' }} {{ "}}" }} {{ '%}' }} {{ {'a': {'b': 1}}['a'] }}
{%- for m in messages %}
{{ '<|' ~ m.role ~ '|>
' ~ (m.content if m.content is string else '') ~ '<|end|>' }}
{%- endfor %}
""",
    # namespace, loop variables and loop controls
    "loops": r"""
{%- set ns = namespace(count=0, last_user=-1, roles=[], seen=none) -%}
{%- for m in messages -%}
{%- set ns.count = ns.count + 1 -%}
{%- if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif -%}
{%- set ns.roles = ns.roles + [m.role] -%}
{{ loop.index }}/{{ loop.length }} {{ loop.index0 }} {{ loop.revindex }} {{ loop.revindex0 }} {{ loop.first }} {{ loop.last }} {{ loop.depth }} {{ loop.depth0 }}
 prev={{ loop.previtem.role if loop.previtem is defined else '-' }} next={{ loop.nextitem.role if loop.nextitem is defined else '-' }} {{ loop.cycle('odd', 'even') }} {{ loop.changed(m.role) }}
{% endfor -%}
{{ ns.count }} {{ ns.last_user }} {{ ns.roles }} {{ ns.seen }}
{% for m in messages if m.role != 'system' -%}
{%- if loop.index > 2 %}{% break %}{% endif -%}
{%- if m.role == 'assistant' %}{% continue %}{% endif -%}
[{{ loop.index }} {{ m.role }}]
{%- else -%}
nothing
{%- endfor %}
{% for i in range(3) %}{% for j in range(i) %}{{ i }}{{ j }}{{ loop.last }} {% endfor %}{% endfor %}
{% for k, v in {'b': 2, 'a': 1}.items() %}{{ k }}={{ v }} {% endfor %}
{% for a, (b, c) in [(1, (2, 3)), (4, 'xy')] %}{{ a }}{{ b }}{{ c }}{% endfor %}
{% for x in [] %}x{% else %}empty{% endfor %} {% for ch in 'ab' %}{{ ch }}{% endfor %}
""",
    # tests
    "tests": r"""
{%- for m in messages -%}
{{ m.role }}: {{ m.content is string }} {{ m.content is sequence }} {{ m.content is iterable }} {{ m.content is mapping }} {{ m.tool_calls is defined }} {{ m.tool_calls is undefined }} {{ m.name is none }} {{ m.content is not none }} {{ m is mapping }}
 {{ loop.index is odd }} {{ loop.index is even }} {{ loop.index is divisibleby 2 }} {{ loop.index is divisibleby(3) }} {{ loop.index is number }} {{ loop.index is integer }} {{ loop.index is float }} {{ loop.first is boolean }} {{ loop.first is true }} {{ loop.last is false }}
 {{ m.role is in ['user', 'system'] }} {{ m.role is eq 'user' }} {{ m.role is ne 'user' }} {{ loop.index is gt 1 }} {{ loop.index is ge 2 }} {{ loop.index is lt 2 }} {{ loop.index is le 1 }} {{ loop.index is greaterthan 1 }} {{ loop.index is lessthan 3 }}
 {{ m.role is lower }} {{ m.role|upper is upper }} {{ m.role is sameas 'x' }} {{ none is sameas none }} {{ m.role is escaped }} {{ (m.role|e) is escaped }} {{ raise_exception is callable }} {{ 'upper' is filter }} {{ 'odd' is test }} {{ 1.5 is float }}
{% endfor -%}
""",
    # slicing and item access
    "slicing": r"""
{%- set roles = messages|map(attribute='role')|list -%}
{{ roles[0] }} {{ roles[-1] }} {{ roles[1:] }} {{ roles[:-1] }} {{ roles[::-1] }} {{ roles[::2] }} {{ roles[1:3] }} {{ roles[-2:] }} {{ roles[5:9] }} {{ roles[-100:100] }} {{ roles[3:1] }} {{ roles[3:1:-1] }}
{%- for m in messages %}
{%- set c = m.content if m.content is string else m.content[0].text %}
{{ c[:5] }}|{{ c[-3:] }}|{{ c[::-1] }}|{{ c[1] if c else '' }}|{{ c[2:] }}|{{ messages[loop.index0]['role'] }}|{{ m['missing'] is defined }}|{{ messages.0.role }}
{%- endfor %}
""",
    # string methods
    "str-methods": r"""
{%- for m in messages -%}
{%- set c = m.content if m.content is string else (m.content|map(attribute='text')|join) -%}
{{ c.strip() }}|{{ c.lstrip() }}|{{ c.rstrip() }}|{{ c.strip(' !?.') }}|{{ c.startswith('What') }}|{{ c.startswith(('A', 'H', 'W')) }}|{{ c.endswith('?') }}
{{ c.split() }}|{{ c.split(' ', 1) }}|{{ c.rsplit(' ', 1) }}|{{ c.split('o') }}|{{ c.splitlines() }}|{{ c.replace('a', 'A', 1) }}|{{ c.replace('', '.') if c|length < 4 else '' }}
{{ c.find('o') }}|{{ c.rfind('o') }}|{{ c.count('o') }}|{{ c.upper() }}|{{ c.lower() }}|{{ c.title() }}|{{ c.capitalize() }}|{{ c.swapcase() }}
{{ c.isdigit() }}|{{ c.isalpha() }}|{{ c.isspace() }}|{{ c.isalnum() }}|{{ c.islower() }}|{{ c.isupper() }}|{{ c.removeprefix('What') }}|{{ c.removesuffix('?') }}
{{ m.role.ljust(10, '.') }}|{{ m.role.rjust(10) }}|{{ m.role.center(11, '*') }}|{{ '42'.zfill(5) }}|{{ c.partition(' ') }}|{{ c.rpartition(' ') }}|{{ '-'.join([m.role, 'x']) }}
{{ '{}: {}'.format(m.role, c|length) }}|{{ '{0}{1}{0}'.format('a', m.role) }}|{{ '{role!r} {n:>5} {f:.2f}'.format(role=m.role, n=loop.index, f=1/3) }}|{{ '%s=%d %5.1f %-6s|' % (m.role, loop.index, 3.14159, 'ab') }}|{{ '%(r)s' % {'r': m.role} }}
{% endfor -%}
""",
    # filters
    "filters": r"""
{%- set tools_list = tools if tools else [] -%}
{{ messages|length }} {{ messages|count }} {{ messages|first|tojson }} {{ (messages|last).role }} {{ messages|map(attribute='role')|unique|list }} {{ messages|map(attribute='role')|join(', ') }}
{{ messages|selectattr('role', 'equalto', 'user')|list|length }} {{ messages|rejectattr('role', 'equalto', 'user')|map(attribute='role')|list }} {{ messages|selectattr('tool_calls', 'defined')|list|length }} {{ messages|rejectattr('content')|list|length }}
{{ [3, 1, 2]|sort }} {{ [3, 1, 2]|sort(reverse=true) }} {{ ['b', 'A', 'c']|sort }} {{ ['b', 'A', 'c']|sort(case_sensitive=true) }} {{ messages|sort(attribute='role')|map(attribute='role')|list }} {{ [1, 2, 3]|sum }} {{ [{'n': 1}, {'n': 4}]|sum(attribute='n') }}
{{ [1, 5, 3]|max }} {{ ['b', 'A']|min }} {{ {'b': 1, 'a': 2}|dictsort }} {{ {'b': 1, 'a': 2}|dictsort(by='value', reverse=true) }} {{ {'x': 1}|items|list }} {{ [1, 2, 3, 4, 5]|batch(2)|list }} {{ [1, 2, 3, 4, 5]|slice(2)|list }}
{{ [1, 2, 3]|select('odd')|list }} {{ [1, 2, 3]|reject('odd')|list }} {{ [0, 1, '', 'a', none]|select|list }} {{ ['a', 'b']|map('upper')|list }} {{ [' a ', 'b ']|map('trim')|list }} {{ [1, 2]|map('string')|list }}
{{ '  padded  '|trim }}|{{ '--x--'|trim('-') }}|{{ 'a\nb\n\nc'|indent }}|{{ 'a\nb\n\nc'|indent(2, first=true, blank=true) }}|{{ 'a\nb'|indent('> ') }}|{{ 'hello world'|center(15) }}|{{ 'hello'|replace('l', 'L') }}|{{ 'hello'|replace('l', 'L', 1) }}|{{ 'abc'|reverse }}|{{ [1, 2]|reverse|list }}
{{ '42'|int + 1 }} {{ '3.7'|int }} {{ 'x'|int(7) }} {{ '0x1A'|int(0, 16) }} {{ '2.5'|float * 2 }} {{ 'x'|float }} {{ -3|abs }} {{ 2.567|round(2) }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.1|round(method='ceil') }} {{ 7|string ~ '!' }} {{ 1000000|string|length }}
{{ 'Hello World Foo'|truncate(9) }}|{{ 'Hello World Foo'|truncate(9, true) }}|{{ 'Hello'|truncate(3, end='') }}|{{ 'one two, three!'|wordcount }}|{{ 'hi %s and %d'|format('x', 3) }}|{{ 'mixed Case'|capitalize }}|{{ 'the-title of(it)'|title }}
{{ undefined_var|default('dflt') }} {{ none|default('dflt') }} {{ ''|default('dflt', true) }} {{ ''|d('d2', boolean=true) }} {{ messages[0]|attr('role') }} {{ messages|groupby('role')|map('first')|list }}
{{ '<b>&"\''|e }} {{ '<b>'|escape|length }} {{ '<i>'|safe + '<b>' }} {{ '<i>' + '<b>'|safe }} {{ ('<i>'|safe ~ '<b>') }} {{ '<x>'|forceescape }}
{{ tools_list|length }} {{ tools_list|map(attribute='function.name')|list }} {{ tools_list|map(attribute='function.missing', default='none!')|list }}
""",
    # tojson with its arguments
    "tojson": r"""
{%- for m in messages %}
{{ m|tojson }}
{{ m|tojson(indent=2) }}
{{ m|tojson(indent=4, sort_keys=true) }}
{{ m|tojson(separators=(',', ':')) }}
{{ m|tojson(ensure_ascii=true) }}
{%- endfor %}
{{ tools|tojson }}
{{ {'a': [1, 2.5, none, true, 'x"y'], 'b': {'c': 1e-7, 'd': 10000000000000000.0}, 0: 'int key'}|tojson }}
{{ (1, 2)|tojson }} {{ ''|tojson }} {{ 'é\n\t\u0001'|tojson }} {{ 'é'|tojson(ensure_ascii=true) }}
""",
    # printing Python values, arithmetic, operators, expressions
    "values": r"""
{{ messages[0] }}
{{ [1, 'a', none, true, false, 1.5, (1,), (1, 2), {'k': [1]}] }} {{ (1, 'b') }} {{ {'a': 1, 0: 2, none: 3} }} {{ 1e20 }} {{ 1e-5 }} {{ 0.1 + 0.2 }} {{ 1/3 }} {{ 2.0 }} {{ -0.0 }} {{ 123456789012345678 }}
{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7.5 % 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ -2 ** 2 }} {{ 10 / 4 }} {{ 'ab' * 3 }} {{ 3 * 'x' }} {{ [1] * 3 }} {{ [1, 2] + [3] }} {{ 'a' ~ 1 ~ none ~ true }} {{ 1 + true }}
{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' in 'cat' }} {{ 'z' not in ['a'] }} {{ 'k' in {'k': 1} }} {{ not none }} {{ none or 'x' }} {{ 0 and 'y' }} {{ [] or [1] }} {{ 'yes' if messages else 'no' }} {{ 'x' if false }}|
{{ messages|length > 2 and messages[0].role == 'system' }} {{ (messages|length) % 2 == 0 }} {{ [1, 2] == [1, 2] }} {{ (1, 2) == [1, 2] }} {{ {'a': 1} == {'a': 1} }} {{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }}
{%- set a, b = 1, 2 %} {{ a }}{{ b }} {% set t = 1, 'two' %}{{ t }} {% set d = {1: 'one', 2: 'two'} %}{{ d[1] }}{{ d.get(2) }}{{ d.get(3, 'none') }}{{ 1 in d }} {{ d }}
{{ dict(a=1, b=2) }} {{ dict([('x', 1)]) }} {{ dict({'y': 2}, z=3) }} {{ range(3)|list }} {{ range(1, 10, 3)|list }} {{ range(5, 0, -2)|list }} {{ namespace(a=1).a }}
{{ 'é'|upper }} {{ 'ß'|upper }} {{ 'ÉCOLE'|lower }} {{ 'é'.upper() }} {{ messages|map(attribute='content')|select('string')|map('upper')|join('|') }}
""",
    # strftime_now and raise_exception (an expected error in some conversations)
    "date-and-errors": r"""
{{- strftime_now('%Y-%m-%d %H:%M %a %b %B %A %j %p %%') }}
{%- if messages[0].role == 'assistant' %}{{ raise_exception('The first message cannot be from the assistant: ' ~ messages[0].content) }}{% endif %}
{%- for m in messages %}
{%- if m.role not in ['system', 'user', 'assistant', 'tool'] %}{{ raise_exception('Unknown role ' ~ m.role) }}{% endif %}
{%- if m.role == 'tool' and m.tool_call_id|length != 9 %}{{ raise_exception("tool_call_id must be 9 characters, got '" ~ m.tool_call_id ~ "'") }}{% endif %}
{{ m.role }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '\n<assistant>' }}{% endif %}
""",
    # a tool-use template in the style of the ones models ship (generation blocks included)
    "tool-use": r"""
{%- macro render_schema(props, required, depth=0) -%}
{%- for name, spec in props|dictsort -%}
{{ '  ' * depth }}- {{ name }}{% if name in required %} (required){% endif %}: {{ spec.type }}{% if spec.enum is defined %} one of {{ spec.enum|join('/') }}{% endif %}{% if spec.description %} -- {{ spec.description|trim }}{% endif %}
{% endfor -%}
{%- endmacro -%}
{%- if tools %}
# Tools
{% for t in tools %}
## {{ t.function.name }}
{{ t.function.description }}
{{ render_schema(t.function.parameters.properties, t.function.parameters.required|default([])) }}
{%- endfor %}
{%- endif %}
{%- for m in messages %}
{%- if m.role == 'assistant' %}
<assistant>{% generation %}{{ m.content if m.content is string else '' }}
{%- for tc in m.tool_calls|default([]) %}
<call id="{{ tc.id }}">{{ tc.function.name }}({% set args = tc.function.arguments %}{% if args is mapping %}{% for k, v in args.items() %}{{ k }}={{ v|tojson }}{% if not loop.last %}, {% endif %}{% endfor %}{% else %}{{ args }}{% endif %})</call>
{%- endfor %}</assistant>{% endgeneration %}
{%- elif m.role == 'tool' %}
<result for="{{ m.tool_call_id|default('?') }}" name="{{ m.name|default('') }}">{{ m.content }}</result>
{%- else %}
<{{ m.role }}>{{ m.content if m.content is string else m.content|map(attribute='text')|join }}</{{ m.role }}>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<assistant>
{%- endif %}
""",
}
