# Set a service's NSSM parameters (registry values under ...\Services\<name>\Parameters) in one round trip
# instead of one win_regedit task per value. Idempotent: only values that differ are written; their names
# are the output. Runs in check mode without writing (SupportsShouldProcess).
# The environment arrives as a SecureString (sensitive_parameters): it never appears in module args or logs.
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)][string]$Path,
    [Parameter(Mandatory)][object[]]$Values,
    [System.Security.SecureString]$Environment
)
$ErrorActionPreference = 'Stop'
$kinds = @{ string = 'String'; expandstring = 'ExpandString'; multistring = 'MultiString'; dword = 'DWord' }

$wanted = @(foreach ($v in $Values) { @{ Name = [string]$v.name; Kind = $kinds[[string]$v.type]; Data = $v.data } })
if ($null -ne $Environment) {
    $plain = [System.Net.NetworkCredential]::new('', $Environment).Password
    $lines = [string[]]@($plain -split "`n" | Where-Object { $_ -ne '' })
    $wanted += @{ Name = 'AppEnvironmentExtra'; Kind = 'MultiString'; Data = $lines }
}

if (-not (Test-Path -LiteralPath $Path)) {
    if ($PSCmdlet.ShouldProcess($Path, 'Create registry key')) {
        New-Item -Path $Path -Force | Out-Null
    }
    $Ansible.Changed = $true
}
$key = Get-Item -LiteralPath $Path -ErrorAction SilentlyContinue

foreach ($w in $wanted) {
    if ($null -eq $w.Kind) { throw "Unsupported registry type for $($w.Name)" }
    $data = switch ($w.Kind) {
        'DWord' { [int]$w.Data }
        'MultiString' { [string[]]@($w.Data) }
        default { [string]$w.Data }
    }
    $same = $false
    if ($key -and ($key.GetValueNames() -contains $w.Name)) {
        $haveKind = $key.GetValueKind($w.Name).ToString()
        $have = $key.GetValue($w.Name, $null, 'DoNotExpandEnvironmentNames')
        $same = ($haveKind -eq $w.Kind) -and ((@($have) -join "`n") -ceq (@($data) -join "`n"))
    }
    if (-not $same) {
        if ($PSCmdlet.ShouldProcess("$Path\$($w.Name)", 'Set registry value')) {
            New-ItemProperty -LiteralPath $Path -Name $w.Name -PropertyType $w.Kind -Value $data -Force | Out-Null
        }
        $Ansible.Changed = $true
        $w.Name
    }
}
