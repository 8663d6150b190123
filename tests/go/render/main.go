// Command render renders a chat the way Ollama renders /api/chat with a model's Go
// TEMPLATE, so tests can compare it byte for byte with the model's Jinja chat template.
//
// Input on stdin, JSON: {"template": "...", "messages": [{"role": "...", "content": "..."}],
// "system": "..."}, where "system" is the model's SYSTEM ("" for none). Output on stdout:
// the rendered prompt, nothing added.
//
// What Ollama does, and this program repeats (ollama/ollama server/routes.go ChatHandler
// and template/template.go): SYSTEM is prepended as a system message when the conversation
// does not start with one; consecutive messages of the same role are merged with a blank
// line between them; .System is every system message joined the same way; the template is
// parsed with missingkey=zero and Ollama's one extra function, json, and executed once with
// .Messages, .System, .Tools and an empty .Response.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type request struct {
	Template string    `json:"template"`
	Messages []message `json:"messages"`
	System   string    `json:"system"`
}

// collate merges consecutive messages of one role and gathers the system messages, as
// Ollama's template.collate does.
func collate(messages []message) (string, []*message) {
	var system []string
	var collated []*message
	for i := range messages {
		m := messages[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(collated); n > 0 && collated[n-1].Role == m.Role && m.Role != "tool" {
			collated[n-1].Content += "\n\n" + m.Content
		} else {
			collated = append(collated, &m)
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func render(req request) (string, error) {
	messages := req.Messages
	if req.System != "" && (len(messages) == 0 || messages[0].Role != "system") {
		messages = append([]message{{Role: "system", Content: req.System}}, messages...)
	}
	funcs := template.FuncMap{
		"json": func(v any) string {
			b, _ := json.Marshal(v)
			return string(b)
		},
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Template)
	if err != nil {
		return "", err
	}
	system, collated := collate(messages)
	var out strings.Builder
	err = tmpl.Execute(&out, map[string]any{
		"System":   system,
		"Messages": collated,
		"Tools":    nil,
		"Response": "",
	})
	return out.String(), err
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "reading the request:", err)
		os.Exit(2)
	}
	text, err := render(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rendering:", err)
		os.Exit(1)
	}
	os.Stdout.WriteString(text)
}
